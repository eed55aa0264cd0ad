//! Replays the committed fuzz corpus through the `connect_raw` fuzz target's checks on stable Rust,
//! so CI guards every input the fuzzer found interesting (and every crash it ever reproduced)
//! without running a fuzzer.
//!
//! The checks live in `fuzz/checks/connect_roundtrip.rs` and are included here verbatim; they use
//! only the public `mqtls::mqtt::connect` API.

use std::fs;
use std::path::{Path, PathBuf};

// `connect_roundtrip.rs` comes in through `websocket_frames.rs`, which includes it (a file may be a
// module only once).
#[path = "../fuzz/checks/websocket_frames.rs"]
mod websocket_frames;

use websocket_frames::connect_roundtrip::check_connect_roundtrip;

/// The files directly inside `fuzz/<dir>`, sorted. A missing or empty directory fails the test that
/// asked: a replay of nothing would pass having checked nothing.
fn inputs(dir: &str) -> Vec<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let entries = fs::read_dir(&path).unwrap_or_else(|e| panic!("fuzz/{dir} is missing ({}: {e})", path.display()));
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("readable directory entry").path()).filter(|p| p.is_file()).collect();
    assert!(!files.is_empty(), "fuzz/{dir} holds no input files ({})", path.display());
    files.sort();
    files
}

fn replay(files: &[PathBuf]) {
    for path in files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check_connect_roundtrip(&data));
        assert!(outcome.is_ok(), "{} fails the connect_raw checks ({} bytes: {data:02x?})", path.display(), data.len());
    }
}

#[test]
fn connect_raw_corpus_passes_the_fuzz_checks() {
    replay(&inputs("corpus/connect_raw"));
}

#[test]
fn connect_raw_corpus_holds_every_captured_connect() {
    let corpus: Vec<Vec<u8>> = inputs("corpus/connect_raw").iter().filter_map(|p| fs::read(p).ok()).collect();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for entry in fs::read_dir(&data).expect("tests/data") {
        let path = entry.expect("readable directory entry").path();
        let captured = fs::read(&path).expect("readable capture");
        assert!(corpus.contains(&captured), "{} is missing from fuzz/corpus/connect_raw", path.display());
    }
}

/// `fuzz/regressions/connect_raw/`: minimised inputs that once broke the reader or editor, and
/// hand-written edge cases, each file named for what it reproduces (see fuzz/README.md).
#[test]
fn crash_reproducers_pass_the_fuzz_checks() {
    replay(&inputs("regressions/connect_raw"));
}

#[test]
fn websocket_frames_corpus_passes_the_fuzz_checks() {
    for path in inputs("corpus/websocket_frames") {
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| websocket_frames::check_websocket_frames(&data));
        assert!(outcome.is_ok(), "{} fails the websocket_frames checks ({data:02x?})", path.display());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// The websocket_frames checks on arbitrary bytes, and on bytes that start like a client's binary
    /// frame (so that lengths, masks and continuation frames are explored, not only garbage), on stable
    /// Rust in every `cargo test`.
    #[test]
    fn websocket_frames_checks_hold_for_any_bytes(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
        head in proptest::sample::select(vec![vec![], vec![0x82u8, 0x8a], vec![0x02, 0x84], vec![0x89, 0x80], vec![0x82, 0xfe, 0x00]]),
    ) {
        let mut wire = head;
        wire.extend_from_slice(&data);
        websocket_frames::check_websocket_frames(&wire);
    }
}
