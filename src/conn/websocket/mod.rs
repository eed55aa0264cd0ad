//! MQTT over secure WebSockets (`protocol = "websockets"`), for browsers and for devices that can only
//! get out on 443, in front of brokers that have no WebSocket listener.
//!
//! After the TLS handshake, [`upgrade`] answers the HTTP/1.1 upgrade (path, `mqtt` subprotocol, Origin)
//! and [`stream::WsStream`] turns the WebSocket into the byte stream under its binary frames. From then
//! on the connection is handled exactly as on 8883: the CONNECT reader, the refusal CONNACKs and the
//! splice read and write bytes and never see a frame.
//!
//! The framing is tokio-tungstenite's (the most used WebSocket crate for tokio, maintained with
//! tungstenite's autobahn suite); the upgrade is ours (parsed by httparse) because tungstenite's server
//! handshake closes a plain HTTP request without an answer, and operators need a 404/400/403/426 that
//! says what was wrong. No extension is negotiated: permessage-deflate would let each client pin a
//! compression window and opens CRIME-style length leaks, for MQTT payloads that are usually small.

use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

pub(crate) mod client;
pub(crate) mod stream;
pub(crate) mod upgrade;

pub(crate) use upgrade::{upgrade, UpgradeError};

/// Default `ws_path`: what MQTT.js, Paho and Mosquitto's own WebSocket listener use.
pub(crate) const DEFAULT_PATH: &str = "/mqtt";

/// Default `ws_max_message_size`: a WebSocket message is held whole before its bytes go on, so this is
/// what one client can make mqtls hold; 1 MiB covers MQTT.js's and Paho's packets (one per message)
/// with room, while 100,000 clients can't pin more than memory allows without sending it all.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// What a listener speaks inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerProtocol {
    /// MQTT directly over TLS (port 8883).
    #[default]
    Mqtt,
    /// MQTT in binary WebSocket frames over TLS (wss://).
    Websockets,
}

impl ListenerProtocol {
    /// For log lines (the connection span's `transport`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Websockets => "websockets",
        }
    }
}

/// A pattern of `ws_allowed_origins` that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("{pattern:?} is not a valid glob: {reason}")]
pub struct OriginError {
    pattern: String,
    reason: String,
}

/// The Origins a browser page may connect from (`ws_allowed_origins`), as written and compiled.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    patterns: Vec<String>,
    set: Option<GlobSet>,
}

impl Origins {
    /// Compiles the globs; case-insensitive, since scheme and host are.
    pub fn new(patterns: &[String]) -> Result<Origins, OriginError> {
        if patterns.is_empty() {
            return Ok(Origins::default());
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|e| OriginError { pattern: pattern.clone(), reason: e.kind().to_string() })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| OriginError { pattern: patterns.join(", "), reason: e.to_string() })?;
        Ok(Origins { patterns: patterns.to_vec(), set: Some(set) })
    }

    /// Whether a request with this `Origin` header (or none) may upgrade. Without patterns every origin
    /// may; with them a browser's Origin must match one. A request without an Origin is not a browser's
    /// (browsers always send one), so cross-site hijacking does not apply to it.
    pub(crate) fn admit(&self, origin: Option<&str>) -> bool {
        match (&self.set, origin) {
            (None, _) | (Some(_), None) => true,
            (Some(set), Some(origin)) => set.is_match(origin),
        }
    }
}

impl PartialEq for Origins {
    fn eq(&self, other: &Origins) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Origins {}

impl Serialize for Origins {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(s)
    }
}

/// A listener's WebSocket settings, under the file's keys (all printed, whatever the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebSocketSettings {
    pub protocol: ListenerProtocol,
    /// The request path the upgrade is served on (the query string is ignored).
    pub ws_path: String,
    /// Browser origins allowed to connect; empty = any.
    pub ws_allowed_origins: Origins,
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub ws_max_message_size: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        WebSocketSettings {
            protocol: ListenerProtocol::Mqtt,
            ws_path: DEFAULT_PATH.to_string(),
            ws_allowed_origins: Origins::default(),
            ws_max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `path` can be a `ws_path`: absolute, without a query, spaces or control characters.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{path:?} must be a plain path (no query, fragment, spaces or control characters)"));
    }
    Ok(())
}

/// What a client's bytes after the upgrade unwrap to, read to their end with a `max_message_size` cap:
/// the byte stream its binary frames carry, or the close code a violation got (with the bytes unwrapped
/// before it). Synchronous, over memory: for the fuzz targets (frames → stream → CONNECT reader) and
/// tests.
pub fn unwrap_frames(wire: &[u8], max_message_size: usize) -> (Vec<u8>, Option<u16>) {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};
    use tokio::io::{AsyncRead, ReadBuf};

    struct Noop;
    impl Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    let waker = Waker::from(std::sync::Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    // Memory never waits, so every poll below is ready at once.
    let mut new = std::pin::pin!(stream::WsStream::new(memory::Wire::new(wire), Vec::new(), max_message_size));
    let mut ws = match new.as_mut().poll(&mut cx) {
        Poll::Ready(ws) => ws,
        Poll::Pending => return (Vec::new(), None),
    };
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match std::pin::Pin::new(&mut ws).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return (out, None),
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(e)) => return (out, stream::close_code_of(&e)),
            Poll::Pending => return (out, None),
        }
    }
}

/// A client's wire bytes in memory, for [`unwrap_frames`]; what mqtls writes back is discarded.
mod memory {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    pub(super) struct Wire<'a> {
        rest: &'a [u8],
    }

    impl<'a> Wire<'a> {
        pub(super) fn new(rest: &'a [u8]) -> Wire<'a> {
            Wire { rest }
        }
    }

    impl AsyncRead for Wire<'_> {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.rest.len().min(buf.remaining());
            let (now, later) = self.rest.split_at(n);
            buf.put_slice(now);
            self.rest = later;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Wire<'_> {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_allowed_origins_admits_every_origin() {
        let any = Origins::new(&[]).expect("empty");
        assert!(any.admit(Some("https://evil.example")));
        assert!(any.admit(None));
    }

    #[test]
    fn allowed_origins_refuse_a_foreign_browser_but_not_a_device_without_origin() {
        let origins = Origins::new(&["https://*.example.org".into(), "http://localhost:*".into()]).expect("globs");
        assert!(origins.admit(Some("https://dash.example.org")));
        assert!(origins.admit(Some("HTTPS://Dash.Example.org")));
        assert!(origins.admit(Some("http://localhost:8080")));
        assert!(!origins.admit(Some("https://evil.example")));
        assert!(!origins.admit(Some("null")));
        assert!(origins.admit(None));
    }

    #[test]
    fn an_invalid_origin_glob_is_an_error_naming_it() {
        let err = Origins::new(&["https://[a".into()]).expect_err("invalid");
        assert!(err.to_string().contains("https://[a"), "{err}");
    }

    #[test]
    fn frames_unwrap_to_their_stream_and_a_violation_to_its_close_code() {
        // "ab" in a masked binary frame, then "c" in another, then a text frame.
        let wire = [0x82, 0x82, 0, 0, 0, 0, b'a', b'b', 0x82, 0x81, 0, 0, 0, 0, b'c', 0x81, 0x80, 0, 0, 0, 0];
        assert_eq!(unwrap_frames(&wire, 1024), (b"abc".to_vec(), Some(1003)));
        assert_eq!(unwrap_frames(wire.get(..15).expect("two frames"), 1024), (b"abc".to_vec(), None));
        assert_eq!(unwrap_frames(&[0x82, 0x05, 1, 2, 3, 4, 5], 1024), (Vec::new(), Some(1002)), "unmasked");
    }

    #[test]
    fn a_ws_path_must_be_an_absolute_plain_path() {
        assert!(check_path("/mqtt").is_ok());
        assert!(check_path("/a/b-c").is_ok());
        assert!(check_path("mqtt").is_err());
        assert!(check_path("/mqtt?x=1").is_err());
        assert!(check_path("/m qtt").is_err());
    }
}
