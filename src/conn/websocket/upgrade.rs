//! The HTTP/1.1 upgrade to a WebSocket (RFC 6455 §4.2), with the MQTT subprotocol (MQTT 5.0 §6,
//! 3.1.1 §6). [`check`] is pure (a parsed request in, the 101's facts or a refusal out); [`upgrade`]
//! reads the request head, answers, and wraps the stream. The caller bounds it with the handshake
//! deadline: a slow request head is a slowloris like a slow ClientHello.

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::stream::WsStream;
use super::WebSocketSettings;

/// Largest request head read. Browsers send well under 2 KiB (cookies for the host included, which a
/// wss:// page on a dashboard domain may carry); more is refused rather than buffered.
const MAX_HEAD: usize = 8 * 1024;

/// Most header lines parsed; a real upgrade has about fifteen.
const MAX_HEADERS: usize = 64;

/// The subprotocols mqtls speaks, in preference order: `mqtt` (MQTT 3.1.1 and 5.0), and `mqttv3.1`,
/// which old Paho JavaScript clients ask for.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why an upgrade request was answered with an error status. Variants double as the bounded `reason`
/// label of `mqtls_websocket_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Another path than `ws_path`: 404.
    WrongPath,
    /// Not a GET: 405.
    Method,
    /// A plain HTTP request (no `Upgrade: websocket`): 426.
    NotUpgrade,
    /// A WebSocket version other than 13: 426 naming 13.
    Version,
    /// No `Sec-WebSocket-Key`, or not one: 400.
    BadKey,
    /// No `mqtt` (or `mqttv3.1`) among the offered subprotocols: 400.
    Subprotocol,
    /// An `Origin` that `ws_allowed_origins` does not admit: 403.
    Origin,
    /// Not an HTTP/1.1 request head: 400.
    Malformed,
    /// A request head over [`MAX_HEAD`]: 431.
    TooLarge,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::WrongPath => "wrong_path",
            Refusal::Method => "method",
            Refusal::NotUpgrade => "not_upgrade",
            Refusal::Version => "version",
            Refusal::BadKey => "bad_key",
            Refusal::Subprotocol => "subprotocol",
            Refusal::Origin => "origin",
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "too_large",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Refusal::WrongPath => "404 Not Found",
            Refusal::Method => "405 Method Not Allowed",
            Refusal::NotUpgrade | Refusal::Version => "426 Upgrade Required",
            Refusal::BadKey | Refusal::Subprotocol | Refusal::Malformed => "400 Bad Request",
            Refusal::Origin => "403 Forbidden",
            Refusal::TooLarge => "431 Request Header Fields Too Large",
        }
    }

    /// Headers that tell the client what would have worked.
    fn extra_headers(self) -> &'static str {
        match self {
            Refusal::Method => "Allow: GET\r\n",
            Refusal::NotUpgrade | Refusal::Version => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            _ => "",
        }
    }

    /// The whole answer: status, headers and a one-line body saying why.
    pub(crate) fn response(self, why: &str) -> Vec<u8> {
        let body = format!("{why}\n");
        format!(
            "HTTP/1.1 {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n{body}",
            self.status(),
            body.len(),
            self.extra_headers(),
        )
        .into_bytes()
    }
}

/// Why a connection ended in its upgrade.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("WebSocket upgrade refused ({}): {detail}", .refusal.status())]
    Refused { refusal: Refusal, detail: String },
    #[error("WebSocket upgrade request not complete within the handshake deadline")]
    Timeout,
    #[error("client closed before completing the WebSocket upgrade request")]
    Closed,
    #[error("WebSocket upgrade: {0}")]
    Io(std::io::Error),
}

impl UpgradeError {
    /// The `reason` label of `mqtls_websocket_refusals_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            UpgradeError::Refused { refusal, .. } => refusal.label(),
            UpgradeError::Timeout => "timeout",
            UpgradeError::Closed => "eof",
            UpgradeError::Io(_) => "io",
        }
    }
}

/// What the 101 answer carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// `Sec-WebSocket-Accept`.
    pub(crate) accept_key: String,
    /// The subprotocol chosen, echoed in `Sec-WebSocket-Protocol`.
    pub(crate) subprotocol: &'static str,
}

impl Accepted {
    fn response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            self.accept_key, self.subprotocol
        )
        .into_bytes()
    }
}

/// The values of every header named `name`, as text (a value that is not UTF-8 is skipped).
fn values<'a>(req: &'a httparse::Request<'_, '_>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    req.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// The comma-separated tokens of every header named `name`, trimmed.
fn tokens<'a>(req: &'a httparse::Request<'_, '_>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    values(req, name).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

/// Decides a complete, parsed request: the 101's facts, or the refusal and why. The path is checked
/// first (another path is simply not here), then that it is an upgrade at all, then its details.
pub(crate) fn check(
    req: &httparse::Request<'_, '_>,
    settings: &WebSocketSettings,
) -> Result<Accepted, (Refusal, String)> {
    let target = req.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    if path != settings.ws_path {
        return Err((Refusal::WrongPath, format!("path {path:?} is not {:?}", settings.ws_path)));
    }
    let method = req.method.unwrap_or_default();
    if method != "GET" {
        return Err((Refusal::Method, format!("method {method} is not GET")));
    }
    let upgrade = tokens(req, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket"));
    let connection = tokens(req, "connection").any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !upgrade || !connection || req.version != Some(1) {
        return Err((Refusal::NotUpgrade, "not a WebSocket upgrade (HTTP/1.1, Upgrade: websocket)".into()));
    }
    let version: Vec<&str> = values(req, "sec-websocket-version").map(str::trim).collect();
    if version != ["13"] {
        return Err((Refusal::Version, format!("Sec-WebSocket-Version {version:?} is not 13")));
    }
    let keys: Vec<&str> = values(req, "sec-websocket-key").map(str::trim).collect();
    let key = match keys.as_slice() {
        [key] if is_key(key) => *key,
        _ => return Err((Refusal::BadKey, "Sec-WebSocket-Key is missing or not 16 bytes in base64".into())),
    };
    if let Some(origin) = values(req, "origin").next().map(str::trim) {
        if !settings.ws_allowed_origins.admit(Some(origin)) {
            return Err((Refusal::Origin, format!("Origin {origin:?} is not in ws_allowed_origins")));
        }
    }
    let offered: Vec<&str> = tokens(req, "sec-websocket-protocol").collect();
    let Some(subprotocol) = SUBPROTOCOLS.into_iter().find(|p| offered.contains(p)) else {
        return Err((
            Refusal::Subprotocol,
            format!("Sec-WebSocket-Protocol {offered:?} names neither mqtt nor mqttv3.1"),
        ));
    };
    Ok(Accepted { accept_key: derive_accept_key(key.as_bytes()), subprotocol })
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64, i.e. 22 base64 characters and `==`.
fn is_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && key.ends_with("==")
        && b.iter().take(22).all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// What reading the head gave: a complete head (its length), or the refusal for a malformed one.
enum Head {
    Complete(usize),
    Partial,
}

fn parse_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<(Head, httparse::Request<'h, 'b>), (Refusal, String)> {
    let mut req = httparse::Request::new(headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok((Head::Complete(n), req)),
        Ok(httparse::Status::Partial) => Ok((Head::Partial, req)),
        Err(httparse::Error::TooManyHeaders) => {
            Err((Refusal::TooLarge, format!("more than {MAX_HEADERS} header lines")))
        }
        Err(e) => Err((Refusal::Malformed, format!("not an HTTP request ({e})"))),
    }
}

/// Reads the upgrade request, answers it, and on a 101 returns the WebSocket over `stream` (a refused
/// request gets its error status and a close). Bytes the client sent behind the request head (it
/// should wait for the 101, but may not) are the first of the frames.
pub(crate) async fn upgrade<S>(mut stream: S, settings: &WebSocketSettings) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let decided = loop {
        if buf.len() >= MAX_HEAD {
            break Err((Refusal::TooLarge, format!("request head over {MAX_HEAD} bytes")));
        }
        let room = MAX_HEAD - buf.len();
        let n = stream.read_buf(&mut (&mut buf).limit(room)).await.map_err(UpgradeError::Io)?;
        if n == 0 {
            return Err(UpgradeError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_head(&buf, &mut headers) {
            Ok((Head::Partial, _)) => continue,
            Ok((Head::Complete(len), req)) => break check(&req, settings).map(|accepted| (accepted, len)),
            Err(refusal) => break Err(refusal),
        }
    };
    match decided {
        Ok((accepted, len)) => {
            stream.write_all(&accepted.response()).await.map_err(UpgradeError::Io)?;
            stream.flush().await.map_err(UpgradeError::Io)?;
            let tail = buf.split_off(len.min(buf.len()));
            drop(buf);
            Ok(WsStream::new(stream, tail, settings.ws_max_message_size).await)
        }
        Err((refusal, detail)) => {
            let _ = stream.write_all(&refusal.response(&detail)).await;
            let _ = stream.shutdown().await;
            Err(UpgradeError::Refused { refusal, detail })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::websocket::Origins;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn settings() -> WebSocketSettings {
        WebSocketSettings {
            ws_allowed_origins: Origins::new(&["https://dash.example.org".into()]).expect("globs"),
            ..WebSocketSettings::default()
        }
    }

    fn decide(head: &str) -> Result<Accepted, (Refusal, String)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_head(head.as_bytes(), &mut headers)? {
            (Head::Complete(_), req) => check(&req, &settings()),
            (Head::Partial, _) => panic!("partial head: {head:?}"),
        }
    }

    fn request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn an_mqtt_upgrade_is_accepted_with_rfc_6455s_accept_key() {
        let accepted = decide(&request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n")).expect("accepted");
        // RFC 6455 §1.3's example.
        assert_eq!(accepted.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.subprotocol, "mqtt");
    }

    #[test]
    fn old_paho_js_mqttv3_1_is_accepted_and_mqtt_is_preferred() {
        let old = decide(&request("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1\r\n")).expect("accepted");
        assert_eq!(old.subprotocol, "mqttv3.1");
        let both = decide(&request("/mqtt?x=1", "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n")).expect("accepted");
        assert_eq!(both.subprotocol, "mqtt");
    }

    #[test]
    fn each_bad_request_gets_its_refusal() {
        let cases = [
            (request("/other", "Sec-WebSocket-Protocol: mqtt\r\n"), Refusal::WrongPath),
            (request("/mqtt", ""), Refusal::Subprotocol),
            (request("/mqtt", "Sec-WebSocket-Protocol: chat\r\n"), Refusal::Subprotocol),
            (request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://evil.example\r\n"), Refusal::Origin),
            ("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), Refusal::NotUpgrade),
            ("POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), Refusal::Method),
            (request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").replace(KEY, "short"), Refusal::BadKey),
            (
                request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").replace("Version: 13", "Version: 8"),
                Refusal::Version,
            ),
        ];
        for (head, expected) in cases {
            let (refusal, why) = decide(&head).expect_err(&head);
            assert_eq!(refusal, expected, "{head}: {why}");
        }
        let allowed = request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://dash.example.org\r\n");
        assert!(decide(&allowed).is_ok());
    }

    #[test]
    fn a_refusal_is_an_http_answer_with_its_status_and_reason() {
        let text = String::from_utf8(Refusal::NotUpgrade.response("not a WebSocket upgrade")).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{text}");
        assert!(text.contains("Upgrade: websocket\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnot a WebSocket upgrade\n"), "{text}");
    }

    #[test]
    fn garbage_is_malformed() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let err = parse_head(b"\x16\x03\x01 not http\r\n\r\n", &mut headers).err().expect("refused");
        assert_eq!(err.0, Refusal::Malformed);
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_with_431() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let head = format!("GET /mqtt HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        client.write_all(head.as_bytes()).await.expect("write");
        let err = upgrade(server, &settings()).await.err().expect("refused");
        assert_eq!(err.label(), "too_large");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }
}
