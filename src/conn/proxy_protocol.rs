//! PROXY protocol (HAProxy's v1 text and v2 binary headers), both ways:
//!
//! - **in**: behind an L4 load balancer, the header it puts before the TLS ClientHello says who the
//!   client really is. It is read only from configured source ranges, and exactly: not one byte of the
//!   ClientHello is consumed, so the TLS handshake runs on the plain TCP stream.
//! - **out**: a header written to the broker before the CONNECT, carrying the client's address and,
//!   in v2, the TLS facts (version, cipher, whether a certificate was verified, its CN) for brokers that
//!   read them (Mosquitto 2.1 `use_identity_as_username`, EMQX, VerneMQ, HiveMQ, NanoMQ).
//!
//! Encoding and decoding are the `proxy-header` crate's (typed SSL TLVs); this module only decides what
//! goes in and who may send one.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use proxy_header::{ParseConfig, ProxiedAddress, ProxyHeader, SslInfo, Tlv};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest inbound header read. A v1 line is at most 107 bytes; v2 headers from cloud load balancers
/// carry a few TLVs (endpoint or link ids) and stay far below this. The cap bounds what a trusted but
/// broken sender can make a connection buffer (the v2 length field would allow 64 KiB).
pub(crate) const MAX_INBOUND_HEADER_LEN: usize = 4096;

/// The v2 signature, which is also the start of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header's fixed part: signature, version/command, family/protocol, length.
const V2_FIXED_LEN: usize = 16;

/// `verify` in the SSL TLV: 0 means "a certificate was presented and verified" (HAProxy's spec); any
/// other value means it was not. Without a certificate there is nothing verified, so it is non-zero.
const VERIFY_OK: u32 = 0;
const VERIFY_NO_CERTIFICATE: u32 = 1;

/// Which header, if any, mqtls writes to the broker before the CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProxyProtocol {
    /// No header: the broker sees mqtls as the client.
    #[default]
    Off,
    /// The text header: addresses only.
    V1,
    /// The binary header: addresses and the TLS facts (SSL TLV with version, cipher and certificate CN).
    V2,
}

impl UpstreamProxyProtocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamProxyProtocol::Off => "off",
            UpstreamProxyProtocol::V1 => "v1",
            UpstreamProxyProtocol::V2 => "v2",
        }
    }
}

/// PROXY protocol settings of a listener (kept together so they can move into a per-listener block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolSettings {
    /// Source ranges whose connections must start with a PROXY header; empty = no header is read.
    pub accept_from: Vec<IpNet>,
    /// The header written to the broker.
    pub upstream: UpstreamProxyProtocol,
    /// Whether the certificate identity is written into the CONNECT's username. `false` passes the
    /// CONNECT byte for byte and leaves the identity to the v2 header's CN (the configuration allows it
    /// only with `upstream = V2`).
    pub rewrite_connect: bool,
}

impl serde::Serialize for ProxyProtocolSettings {
    /// Under the file's key names; `accept_proxy_protocol` is whether any source range is set.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let ranges: Vec<String> = self.accept_from.iter().map(ToString::to_string).collect();
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("upstream_proxy_protocol", &self.upstream)?;
        map.serialize_entry("rewrite_connect", &self.rewrite_connect)?;
        map.serialize_entry("accept_proxy_protocol", &self.accepts())?;
        map.serialize_entry("proxy_protocol_from", &ranges)?;
        map.end()
    }
}

impl Default for ProxyProtocolSettings {
    fn default() -> Self {
        ProxyProtocolSettings { accept_from: Vec::new(), upstream: UpstreamProxyProtocol::Off, rewrite_connect: true }
    }
}

impl ProxyProtocolSettings {
    /// Whether a connection from `peer` must begin with a PROXY header.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        // A listener on [::] sees IPv4 clients as ::ffff:a.b.c.d; ranges are written as a.b.c.d/n.
        let peer = peer.to_canonical();
        self.accept_from.iter().any(|net| net.contains(&peer))
    }

    /// Whether PROXY headers are accepted at all.
    pub(crate) fn accepts(&self) -> bool {
        !self.accept_from.is_empty()
    }
}

/// Parses a `proxy_protocol_from` entry: a CIDR range, or a single address (a /32 or /128).
pub fn parse_source_range(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range like 10.0.0.0/8 or an IP address"))
}

/// The two ends of the client's connection as the client made it: before any load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddrs {
    /// The client.
    pub(crate) source: SocketAddr,
    /// The address the client connected to (mqtls' listener, or the load balancer's front end).
    pub(crate) destination: SocketAddr,
}

/// Why an inbound PROXY header was refused. Variants double as bounded metric labels.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InboundError {
    #[error("connection starts with a PROXY header, but its source may not send one (it is not in proxy_protocol_from, or the listener has no accept_proxy_protocol)")]
    Untrusted,
    #[error("connection from a proxy_protocol_from source does not start with a PROXY header")]
    Missing,
    #[error("malformed PROXY header")]
    Invalid,
    #[error("PROXY header longer than {MAX_INBOUND_HEADER_LEN} bytes")]
    TooLarge,
    #[error("closed before a complete PROXY header")]
    Eof,
    #[error("no complete PROXY header within the handshake deadline")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl InboundError {
    /// Bounded label for metrics and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            InboundError::Untrusted => "untrusted",
            InboundError::Missing => "missing",
            InboundError::Invalid => "invalid",
            InboundError::TooLarge => "too_large",
            InboundError::Eof => "eof",
            InboundError::Timeout => "timeout",
            InboundError::Io(_) => "io",
        }
    }
}

/// Whether a stream's first byte can start a PROXY header. A TLS record starts with its content type
/// (20..=24), never with `P` (v1) or `\r` (v2), so one byte tells a header from a ClientHello.
fn starts_like_header(first: u8) -> bool {
    first == b'P' || first == V2_SIGNATURE[0]
}

/// For a connection from a source that may not send a header: refuses it if it starts with one (a
/// load balancer pointed at the wrong listener, or a client forging its address). Waits for the first
/// byte without consuming it.
pub(crate) async fn refuse_untrusted_header(tcp: &TcpStream) -> Result<(), InboundError> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await? {
        // EOF: nothing to judge; the TLS handshake reports the closed connection as usual.
        0 => Ok(()),
        _ if starts_like_header(first[0]) => Err(InboundError::Untrusted),
        _ => Ok(()),
    }
}

/// Reads the PROXY header a trusted load balancer put before the ClientHello, consuming exactly the
/// header's bytes. Returns the addresses it carries, or `None` for a LOCAL (v2) or UNKNOWN (v1) header
/// (the balancer's own health checks), where the connection's own addresses apply.
pub(crate) async fn read_inbound(tcp: &mut TcpStream) -> Result<Option<ClientAddrs>, InboundError> {
    let config = ParseConfig { include_tlvs: false, allow_v1: true, allow_v2: true };
    let mut buf = vec![0u8; MAX_INBOUND_HEADER_LEN];
    // Bytes at the front of `buf` already taken off the socket: all of them belong to the header.
    let mut consumed = 0;
    loop {
        let window = buf.get_mut(consumed..).ok_or(InboundError::TooLarge)?;
        if window.is_empty() {
            return Err(InboundError::TooLarge);
        }
        // Peek, so that nothing past the header is taken: the TLS handshake must see the ClientHello
        // from its first byte. Whatever is peeked while the header is still incomplete is header, and
        // is consumed before peeking again (a peek returns at once while unread bytes are waiting).
        let n = tcp.peek(window).await?;
        if n == 0 {
            return Err(InboundError::Eof);
        }
        let seen = buf.get(..consumed + n).unwrap_or_default();
        if consumed == 0 && !seen.first().copied().is_some_and(starts_like_header) {
            return Err(InboundError::Missing);
        }
        if announced_v2_len(seen).is_some_and(|len| len > MAX_INBOUND_HEADER_LEN) {
            return Err(InboundError::TooLarge);
        }
        let take = match ProxyHeader::parse(seen, config) {
            Ok((header, len)) => {
                let addrs =
                    header.proxied_address().map(|a| ClientAddrs { source: a.source, destination: a.destination });
                let rest = buf.get_mut(consumed..len).ok_or(InboundError::Invalid)?;
                tcp.read_exact(rest).await?;
                return Ok(addrs);
            }
            Err(proxy_header::Error::BufferTooShort) => n,
            Err(_) => return Err(InboundError::Invalid),
        };
        let chunk = buf.get_mut(consumed..consumed + take).ok_or(InboundError::Invalid)?;
        tcp.read_exact(chunk).await?;
        consumed += take;
    }
}

/// The total length a v2 header announces, once its fixed part is here.
fn announced_v2_len(buf: &[u8]) -> Option<usize> {
    if !buf.starts_with(V2_SIGNATURE) {
        return None;
    }
    let len = buf.get(14..V2_FIXED_LEN)?;
    Some(V2_FIXED_LEN + usize::from(u16::from_be_bytes([*len.first()?, *len.get(1)?])))
}

/// What the TLS handshake established, for the v2 SSL TLV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFacts {
    /// "TLSv1.3" or "TLSv1.2", as OpenSSL (and so HAProxy) names them.
    pub(crate) version: Option<&'static str>,
    /// IANA name of the cipher suite, e.g. "TLS_AES_256_GCM_SHA384".
    pub(crate) cipher: Option<&'static str>,
    /// A verified client certificate is part of this TLS session.
    pub(crate) client_cert: bool,
    /// It was presented in this connection's handshake (not carried over by session resumption).
    pub(crate) client_cert_this_connection: bool,
    /// The certificate's subject CN, when it has a usable one.
    pub(crate) cn: Option<String>,
}

impl TlsFacts {
    /// Reads the facts off a finished rustls server connection.
    pub(crate) fn of(conn: &rustls::ServerConnection, cn: Option<String>) -> TlsFacts {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => None,
        };
        // rustls spells the TLS 1.3 suites TLS13_*; their IANA names are TLS_*.
        let cipher = conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).map(|name| {
            match name.strip_prefix("TLS13_") {
                Some(_) => iana_tls13_name(name),
                None => name,
            }
        });
        let client_cert = conn.peer_certificates().is_some_and(|c| !c.is_empty());
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        TlsFacts { version, cipher, client_cert, client_cert_this_connection: client_cert && !resumed, cn }
    }
}

fn iana_tls13_name(rustls_name: &'static str) -> &'static str {
    match rustls_name {
        "TLS13_AES_128_GCM_SHA256" => "TLS_AES_128_GCM_SHA256",
        "TLS13_AES_256_GCM_SHA384" => "TLS_AES_256_GCM_SHA384",
        "TLS13_CHACHA20_POLY1305_SHA256" => "TLS_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

/// The header to write to the broker before the CONNECT; empty when `version` is off.
pub(crate) fn outbound_header(version: UpstreamProxyProtocol, addrs: ClientAddrs, tls: &TlsFacts) -> Vec<u8> {
    let (source, destination) = same_family(addrs.source, addrs.destination);
    let address = ProxiedAddress::stream(source, destination);
    let mut out = Vec::new();
    let written = match version {
        UpstreamProxyProtocol::Off => return out,
        UpstreamProxyProtocol::V1 => ProxyHeader::with_address(address).encode_v1(&mut out),
        UpstreamProxyProtocol::V2 => {
            let verify = if tls.client_cert { VERIFY_OK } else { VERIFY_NO_CERTIFICATE };
            let mut ssl = SslInfo::new(true, tls.client_cert_this_connection, tls.client_cert, verify);
            if let Some(v) = tls.version {
                ssl.append_tlv(Tlv::SslVersion(v.into()));
            }
            if let Some(cn) = &tls.cn {
                ssl.append_tlv(Tlv::SslCn(cn.as_str().into()));
            }
            if let Some(c) = tls.cipher {
                ssl.append_tlv(Tlv::SslCipher(c.into()));
            }
            ProxyHeader::with_tlvs(Some(address), [Tlv::Ssl(ssl)]).encode_v2(&mut out)
        }
    };
    // Encoding into a Vec fails only for a header over 64 KiB (a CN is at most 64 bytes by RFC 5280,
    // and mqtls refuses longer identities than MQTT can carry anyway); send none rather than half of one.
    if written.is_err() {
        out.clear();
    }
    out
}

/// Both addresses of a PROXY header must be of one family. A load balancer may hand us an IPv6 client
/// while mqtls listens on IPv4 (or the reverse): then both are written as IPv6, the IPv4 one mapped.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (source, destination),
        _ => (v6(source), v6(destination)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &str, d: &str) -> ClientAddrs {
        ClientAddrs { source: s.parse().expect("addr"), destination: d.parse().expect("addr") }
    }

    #[test]
    fn source_ranges_accept_cidrs_and_single_addresses() {
        assert_eq!(parse_source_range("10.0.0.0/8").expect("cidr").to_string(), "10.0.0.0/8");
        assert_eq!(parse_source_range("192.0.2.1").expect("addr").to_string(), "192.0.2.1/32");
        assert_eq!(parse_source_range("2001:db8::/32").expect("v6").to_string(), "2001:db8::/32");
        let err = parse_source_range("10.0.0.0/33").expect_err("bad prefix");
        assert!(err.contains("\"10.0.0.0/33\""), "{err}");
        assert!(parse_source_range("lb.example").is_err());
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let s = ProxyProtocolSettings { accept_from: vec!["10.0.0.0/8".parse().expect("net")], ..Default::default() };
        assert!(s.trusts("10.1.2.3".parse().expect("ip")));
        assert!(s.trusts("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!s.trusts("11.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn v1_header_is_the_text_line() {
        let h = outbound_header(
            UpstreamProxyProtocol::V1,
            addrs("203.0.113.7:4242", "10.0.0.5:8883"),
            &TlsFacts::default(),
        );
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 10.0.0.5 4242 8883\r\n");
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let h = outbound_header(
            UpstreamProxyProtocol::V1,
            addrs("[2001:db8::7]:4242", "10.0.0.5:8883"),
            &TlsFacts::default(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.5 4242 8883\r\n");
    }

    #[test]
    fn off_writes_nothing() {
        let h = outbound_header(UpstreamProxyProtocol::Off, addrs("1.2.3.4:1", "5.6.7.8:2"), &TlsFacts::default());
        assert!(h.is_empty());
    }

    #[test]
    fn v2_ssl_tlv_says_no_certificate_with_a_non_zero_verify() {
        let tls = TlsFacts { version: Some("TLSv1.2"), ..Default::default() };
        let h = outbound_header(UpstreamProxyProtocol::V2, addrs("1.2.3.4:1", "5.6.7.8:2"), &tls);
        let (parsed, len) = ProxyHeader::parse(&h, ParseConfig::default()).expect("parses");
        assert_eq!(len, h.len());
        let ssl = parsed.ssl().expect("ssl tlv");
        assert!(ssl.client_ssl() && !ssl.client_cert_conn() && !ssl.client_cert_sess());
        assert_ne!(ssl.verify(), 0);
        assert_eq!(ssl.version(), Some("TLSv1.2"));
        assert_eq!(ssl.cn(), None);
    }

    #[test]
    fn announced_v2_length_is_read_from_the_fixed_part() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0x12, 0x34]);
        assert_eq!(announced_v2_len(&h), Some(16 + 0x1234));
        assert_eq!(announced_v2_len(h.get(..15).expect("prefix")), None);
        assert_eq!(announced_v2_len(b"PROXY TCP4 "), None);
    }
    /// A connected pair: what the client writes arrives at the returned server side.
    async fn pair(client_sends: &[u8]) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        tokio::io::AsyncWriteExt::write_all(&mut client, client_sends).await.expect("write");
        // Keep the client side open (an EOF would end the reads early) for the test's duration.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            drop(client);
        });
        server
    }

    async fn rest_of(server: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut rest = vec![0u8; n];
        server.read_exact(&mut rest).await.expect("rest");
        rest
    }

    #[tokio::test]
    async fn the_header_is_consumed_exactly_even_when_the_client_hello_arrives_with_it() {
        let client_hello_start = b"\x16\x03\x01\x00\xf4\x01";
        for header in [&b"PROXY TCP4 203.0.113.7 10.0.0.5 4242 8883\r\n"[..], &{
            let mut h = V2_SIGNATURE.to_vec();
            h.extend([0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 10, 0, 0, 5, 0x10, 0x92, 0x22, 0xb3]);
            h
        }] {
            let mut sent = header.to_vec();
            sent.extend(client_hello_start);
            let mut server = pair(&sent).await;
            let got = read_inbound(&mut server).await.expect("header");
            assert_eq!(got, Some(addrs("203.0.113.7:4242", "10.0.0.5:8883")));
            assert_eq!(rest_of(&mut server, client_hello_start.len()).await, client_hello_start);
        }
    }

    #[tokio::test]
    async fn a_client_hello_where_a_header_must_be_is_missing_and_a_header_from_elsewhere_is_untrusted() {
        let mut server = pair(b"\x16\x03\x01\x00\xf4").await;
        assert!(matches!(read_inbound(&mut server).await, Err(InboundError::Missing)));
        let mut server = pair(b"\x16\x03\x01\x00\xf4").await;
        refuse_untrusted_header(&server).await.expect("a ClientHello is fine");
        assert_eq!(rest_of(&mut server, 5).await, b"\x16\x03\x01\x00\xf4", "nothing consumed");
        let server = pair(b"PROXY TCP4 ").await;
        assert!(matches!(refuse_untrusted_header(&server).await, Err(InboundError::Untrusted)));
        let server = pair(V2_SIGNATURE).await;
        assert!(matches!(refuse_untrusted_header(&server).await, Err(InboundError::Untrusted)));
    }
}
