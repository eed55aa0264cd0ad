//! Raw bytes as a WebSocket client's frames → the unwrapped stream → the CONNECT reader; and the bytes
//! as a stream, framed and unwrapped back.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/websocket_frames.rs"]
mod websocket_frames;

fuzz_target!(|data: &[u8]| websocket_frames::check_websocket_frames(data));
