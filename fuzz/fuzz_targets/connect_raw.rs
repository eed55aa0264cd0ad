//! Raw bytes into the CONNECT reader; whatever it accepts goes through the editor and back.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/connect_roundtrip.rs"]
mod connect_roundtrip;

fuzz_target!(|data: &[u8]| connect_roundtrip::check_connect_roundtrip(data));
