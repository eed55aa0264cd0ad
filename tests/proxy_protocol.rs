//! PROXY protocol, both ways. Out: a test broker decodes what mqtls sends with `ppp` (a second, independent
//! implementation) and compares every byte: header, addresses, SSL TLV, then the CONNECT. In: clients
//! reach mqtls through a fake load balancer that prepends a v1 or v2 header with a made-up address.
//!
//! Debian's Mosquitto is 2.0, which does not read PROXY headers (2.1 does), so the header-to-the-broker
//! tests use the decoding test broker; the load-balancer tests use the real Mosquitto.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqtls::config::Config;
use mqtls::conn::proxy_protocol::UpstreamProxyProtocol;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The made-up client a load balancer reports, and the front end it says the client connected to.
const LB_CLIENT: &str = "203.0.113.7:4242";
const LB_FRONTEND: &str = "198.51.100.1:8883";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn v1_header(source: &str, destination: &str) -> Vec<u8> {
    let (s, d) = (addr(source), addr(destination));
    format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
}

/// A v2 PROXY header built by `ppp` (not by the crate mqtls uses).
fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (addr(source), addr(destination)))
        .build()
        .expect("v2 header")
}

/// The SSL TLV's value as HAProxy's spec lays it out: client flags, verify (u32 BE), sub-TLVs.
fn ssl_tlv_value(client: u8, verify: u32, subs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut v = vec![client];
    v.extend(verify.to_be_bytes());
    for (kind, value) in subs {
        v.push(*kind);
        v.extend((value.len() as u16).to_be_bytes());
        v.extend(*value);
    }
    v
}

/// The IANA name of the suite a client negotiated (what the header's cipher sub-TLV says).
fn iana_cipher<S>(tls: &tokio_rustls::client::TlsStream<S>) -> String {
    let name = tls.get_ref().1.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).expect("suite");
    name.replacen("TLS13_", "TLS_", 1)
}

/// Splits what the test broker captured into a v2 header (decoded by ppp) and the bytes after it.
fn split_v2(got: &[u8]) -> (ppp::v2::Header<'_>, &[u8]) {
    let header = ppp::v2::Header::try_from(got).unwrap_or_else(|e| panic!("no v2 header ({e:?}) in {got:?}"));
    let rest = &got[header.len()..];
    (header, rest)
}

/// The only TLV of the header, which must be PP2_TYPE_SSL; returns its value.
fn only_ssl_tlv(header: &ppp::v2::Header<'_>) -> Vec<u8> {
    let tlvs: Vec<_> = header.tlvs().map(|t| t.expect("well-formed TLV")).collect();
    assert_eq!(tlvs.len(), 1, "{tlvs:?}");
    assert_eq!(tlvs[0].kind, PP2_TYPE_SSL);
    tlvs[0].value.to_vec()
}

async fn start(pki: &Pki, upstream: mqtls::conn::upstream::Upstream, edit: impl FnOnce(&mut Config)) -> Mqtls {
    init_logs();
    let mut config = pki.config(upstream);
    edit(&mut config);
    Mqtls::start(config).await
}

/// TLS to mqtls over a TCP connection that first carries `prefix` (a load balancer's PROXY header).
async fn tls_with_prefix(
    port: u16,
    prefix: &[u8],
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(prefix).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let connect = connector.connect(ServerName::try_from("localhost").expect("name"), tcp);
    let mut tls = tokio::time::timeout(WAIT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    tls.flush().await?;
    Ok(tls)
}

/// Sends a CONNECT and reports whether a CONNACK 0 came back.
async fn connect_accepted<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(tls: &mut S) -> bool {
    if tls.write_all(&packet::connect(4, "probe", None, None)).await.is_err() {
        return false;
    }
    matches!(read_exact_within(tls, 4).await, Ok(ack) if ack == [0x20, 2, 0, 0])
}

async fn expect_metric(proxy: &Mqtls, query: &str, value: f64) {
    eventually(&format!("{query} = {value}"), || {
        let now = proxy.metric(query);
        async move { now == value }
    })
    .await;
}

fn trusting(ranges: &[&str]) -> impl FnOnce(&mut Config) {
    let ranges: Vec<ipnet::IpNet> =
        ranges.iter().map(|r| mqtls::conn::proxy_protocol::parse_source_range(r).expect("range")).collect();
    move |c| c.listeners[0].proxy_protocol.accept_from = ranges
}

// ---------------------------------------------------------------------------------------------
// Out: the header mqtls writes to the broker

#[tokio::test(flavor = "multi_thread")]
async fn v2_header_carries_the_client_address_and_tls_facts_then_the_edited_connect() {
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2).await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("handshake");
    let client_addr = tls.get_ref().0.local_addr().expect("addr");
    tls.write_all(&packet::connect(4, "c1", Some("monitor"), Some(b"secret"))).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("CONNACK"), [0x20, 2, 0, 0]);

    let got = captured.await.expect("captured");
    let (header, rest) = split_v2(&got);
    assert_eq!(header.command, ppp::v2::Command::Proxy);
    assert_eq!(header.protocol, ppp::v2::Protocol::Stream);
    assert_eq!(header.addresses, ppp::v2::Addresses::from((client_addr, proxy.addr)));
    let cipher = iana_cipher(&tls);
    let expected = ssl_tlv_value(
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
        0,
        &[
            (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
            (PP2_SUBTYPE_SSL_CN, b"device-42"),
            (PP2_SUBTYPE_SSL_CIPHER, cipher.as_bytes()),
        ],
    );
    assert_eq!(only_ssl_tlv(&header), expected);
    // The identity is in the CONNECT too (username overwritten, password dropped), byte for byte.
    assert_eq!(rest, packet::connect(4, "c1", Some("device-42"), None));
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_header_names_tls_1_2_when_the_client_negotiated_it() {
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2).await;
    let device = pki.ca.client("device-12");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(mqtls::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![device.der.clone()], device.key_der())
        .expect("client cert");
    let mut tls = tls_connect(proxy.port(), Arc::new(config)).await.expect("handshake");
    assert!(connect_accepted(&mut tls).await);
    let got = captured.await.expect("captured");
    let (header, rest) = split_v2(&got);
    let cipher = iana_cipher(&tls);
    assert!(cipher.starts_with("TLS_ECDHE_"), "{cipher}");
    let expected = ssl_tlv_value(
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
        0,
        &[
            (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.2"),
            (PP2_SUBTYPE_SSL_CN, b"device-12"),
            (PP2_SUBTYPE_SSL_CIPHER, cipher.as_bytes()),
        ],
    );
    assert_eq!(only_ssl_tlv(&header), expected);
    assert_eq!(rest, packet::connect(4, "probe", Some("device-12"), None));
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_only_in_the_header_leaves_the_connect_byte_for_byte() {
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2;
        c.listeners[0].proxy_protocol.rewrite_connect = false;
    })
    .await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("handshake");
    // An MQTT 5 CONNECT with a username and password, and a PUBLISH pipelined behind it.
    let mut sent = packet::connect(5, "c5", Some("whoever"), Some(b"pw"));
    sent.extend(packet::publish_qos0(5, "devices/device-42/t", b"hi"));
    tls.write_all(&sent).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("CONNACK"), [0x20, 2, 0, 0]);

    let got = captured.await.expect("captured");
    let (header, rest) = split_v2(&got);
    let ssl = only_ssl_tlv(&header);
    let cipher = iana_cipher(&tls);
    assert_eq!(
        ssl,
        ssl_tlv_value(
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
            0,
            &[
                (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
                (PP2_SUBTYPE_SSL_CN, b"device-42"),
                (PP2_SUBTYPE_SSL_CIPHER, cipher.as_bytes())
            ]
        )
    );
    assert_eq!(rest, sent, "the CONNECT and what follows it pass unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_only_mode_still_refuses_a_certificate_without_a_cn() {
    let pki = Pki::new();
    let (upstream, _captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2;
        c.listeners[0].proxy_protocol.rewrite_connect = false;
    })
    .await;
    let no_cn = pki.ca.issue(true, |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
    });
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&no_cn))).await.expect("handshake");
    tls.write_all(&packet::connect(4, "c", None, None)).await.expect("write");
    // CONNACK 5 "not authorized", then closed: the broker would have had no identity.
    assert_eq!(read_to_close(&mut tls).await, [0x20, 2, 0, 5]);
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_header_carries_the_addresses_then_the_connect() {
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V1).await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("handshake");
    let client_addr = tls.get_ref().0.local_addr().expect("addr");
    assert!(connect_accepted(&mut tls).await);
    let got = captured.await.expect("captured");
    let line = v1_header(&client_addr.to_string(), &proxy.addr.to_string());
    assert_eq!(&got[..line.len()], line.as_slice(), "{:?}", String::from_utf8_lossy(&got));
    let text = std::str::from_utf8(&line).expect("ascii");
    let parsed = ppp::v1::Header::try_from(text).expect("ppp parses it");
    assert_eq!(
        parsed.addresses,
        ppp::v1::Addresses::new_tcp4([127, 0, 0, 1], [127, 0, 0, 1], client_addr.port(), proxy.port())
    );
    assert_eq!(&got[line.len()..], packet::connect(4, "probe", Some("device-42"), None));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_client_certificate_the_ssl_tlv_says_so() {
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2;
        c.listeners[0].tls.client_auth = mqtls::config::ClientAuth::Optional;
    })
    .await;
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, None)).await.expect("handshake");
    assert!(connect_accepted(&mut tls).await);
    let got = captured.await.expect("captured");
    let (header, rest) = split_v2(&got);
    let cipher = iana_cipher(&tls);
    // PP2_CLIENT_SSL only, verify non-zero (nothing was verified), no CN.
    let expected = ssl_tlv_value(
        PP2_CLIENT_SSL,
        1,
        &[(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"), (PP2_SUBTYPE_SSL_CIPHER, cipher.as_bytes())],
    );
    assert_eq!(only_ssl_tlv(&header), expected);
    assert_eq!(rest, packet::connect(4, "probe", None, None));
}

// ---------------------------------------------------------------------------------------------
// In: mqtls behind a load balancer

async fn header_in_is_passed_on(header: Vec<u8>) {
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        trusting(&["127.0.0.0/8"])(c);
        c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2;
    })
    .await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_with_prefix(proxy.port(), &header, client_tls(&pki, Some(&device))).await.expect("handshake");
    assert!(connect_accepted(&mut tls).await);
    let got = captured.await.expect("captured");
    let (out, rest) = split_v2(&got);
    assert_eq!(out.addresses, ppp::v2::Addresses::from((addr(LB_CLIENT), addr(LB_FRONTEND))));
    assert_eq!(rest, packet::connect(4, "probe", Some("device-42"), None));
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_header_from_a_trusted_load_balancer_names_the_client_to_the_broker() {
    header_in_is_passed_on(v1_header(LB_CLIENT, LB_FRONTEND)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_header_from_a_trusted_load_balancer_names_the_client_to_the_broker() {
    header_in_is_passed_on(v2_header(LB_CLIENT, LB_FRONTEND)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v2_header_with_tlvs_arriving_byte_by_byte_is_read_exactly() {
    use ppp::v2::{Builder, Command, Protocol, Type, Version};
    let header = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (addr("[2001:db8::7]:4242"), addr("[2001:db8::1]:8883")),
    )
    .write_tlv(Type::UniqueId, b"vpce-0123456789abcdef".as_slice())
    .expect("tlv")
    .build()
    .expect("header");
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        trusting(&["127.0.0.1"])(c);
        c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V1;
    })
    .await;
    let mut tcp = TcpStream::connect(("127.0.0.1", proxy.port())).await.expect("connect");
    for b in &header {
        tcp.write_all(&[*b]).await.expect("write");
        tcp.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let connector = tokio_rustls::TlsConnector::from(client_tls(&pki, Some(&pki.ca.client("d6"))));
    let mut tls = connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("handshake");
    assert!(connect_accepted(&mut tls).await);
    let got = captured.await.expect("captured");
    let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 8883\r\n";
    assert_eq!(&got[..line.len()], line);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_header_from_the_load_balancer_keeps_the_connection_addresses() {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let local =
        Builder::with_addresses(Version::Two | Command::Local, Protocol::Unspecified, ppp::v2::Addresses::Unspecified)
            .build()
            .expect("header");
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        trusting(&["127.0.0.0/8"])(c);
        c.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V1;
    })
    .await;
    let mut tls =
        tls_with_prefix(proxy.port(), &local, client_tls(&pki, Some(&pki.ca.client("d")))).await.expect("handshake");
    let client_addr = tls.get_ref().0.local_addr().expect("addr");
    assert!(connect_accepted(&mut tls).await);
    let got = captured.await.expect("captured");
    let line = v1_header(&client_addr.to_string(), &proxy.addr.to_string());
    assert_eq!(&got[..line.len()], line.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_from_an_untrusted_source_is_refused_and_a_plain_client_still_works() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = start(&pki, broker.upstream(), trusting(&["10.0.0.0/8"])).await;
    let device = pki.ca.client("device-42");
    for header in [v1_header(LB_CLIENT, LB_FRONTEND), v2_header(LB_CLIENT, LB_FRONTEND)] {
        let refused = tls_with_prefix(proxy.port(), &header, client_tls(&pki, Some(&device))).await;
        assert!(refused.is_err(), "a forged client address must not get a handshake");
    }
    expect_metric(&proxy, "mqtls_connections_total{outcome=\"proxy_protocol\"}", 2.0).await;
    expect_metric(&proxy, "mqtls_proxy_protocol_errors_total{reason=\"untrusted\"}", 2.0).await;
    // 127.0.0.1 is not a load balancer here: its clients connect as usual.
    assert!(mqtt_accepted(proxy.port(), client_tls(&pki, Some(&device))).await);
    broker.expect_log("u'device-42'").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_sent_to_a_listener_without_proxy_protocol_is_reported_as_untrusted_not_as_tls() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = start(&pki, broker.upstream(), |_| {}).await;
    let device = pki.ca.client("device-42");
    for header in [v1_header(LB_CLIENT, LB_FRONTEND), v2_header(LB_CLIENT, LB_FRONTEND)] {
        let refused = tls_with_prefix(proxy.port(), &header, client_tls(&pki, Some(&device))).await;
        assert!(refused.is_err(), "no handshake behind a header the listener does not read");
    }
    expect_metric(&proxy, "mqtls_connections_total{outcome=\"proxy_protocol\"}", 2.0).await;
    expect_metric(&proxy, "mqtls_proxy_protocol_errors_total{reason=\"untrusted\"}", 2.0).await;
    let text = proxy.metrics_text();
    assert!(!text.contains("outcome=\"tls_failed\""), "not a TLS failure:\n{text}");
    assert!(mqtt_accepted(proxy.port(), client_tls(&pki, Some(&device))).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_source_without_a_header_is_refused() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = start(&pki, broker.upstream(), trusting(&["127.0.0.0/8"])).await;
    let device = pki.ca.client("device-42");
    assert!(!mqtt_accepted(proxy.port(), client_tls(&pki, Some(&device))).await);
    expect_metric(&proxy, "mqtls_connections_total{outcome=\"proxy_protocol\"}", 1.0).await;
    expect_metric(&proxy, "mqtls_proxy_protocol_errors_total{reason=\"missing\"}", 1.0).await;
    // Through the load balancer the same client gets in.
    let mut tls = tls_with_prefix(proxy.port(), &v2_header(LB_CLIENT, LB_FRONTEND), client_tls(&pki, Some(&device)))
        .await
        .expect("handshake");
    assert!(connect_accepted(&mut tls).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_oversized_and_stalled_headers_are_refused() {
    let pki = Pki::new();
    let (upstream, _captured) = capturing_upstream().await;
    let proxy = start(&pki, upstream, |c| {
        trusting(&["127.0.0.0/8"])(c);
        c.global.limits.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    oversized.extend(60_000u16.to_be_bytes());
    oversized.extend([0u8; 12]);
    let cases: [(&[u8], &str); 3] = [
        (b"PROXY TCP4 203.0.113.7 nonsense 4242 8883\r\n", "invalid"),
        (&oversized, "too_large"),
        (b"PROXY TCP4 203.0.113.7 ", "timeout"),
    ];
    for (bytes, reason) in cases {
        let mut tcp = TcpStream::connect(("127.0.0.1", proxy.port())).await.expect("connect");
        tcp.write_all(bytes).await.expect("write");
        assert!(read_to_close(&mut tcp).await.is_empty(), "{reason}: closed without a byte");
        expect_metric(&proxy, &format!("mqtls_proxy_protocol_errors_total{{reason=\"{reason}\"}}"), 1.0).await;
    }
}

/// A TCP load balancer in front of mqtls: prepends `header` to every connection, then relays.
async fn fake_load_balancer(target: u16, header: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let Ok(mut backend) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                if backend.write_all(&header).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                }
            });
        }
    });
    port
}

/// The mqtls binary behind a load balancer, real Mosquitto behind it, mosquitto_pub in front: the
/// broker sees the certificate identity and mqtls' JSON log names the client the header named.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_behind_a_load_balancer_is_logged_with_the_address_the_header_names() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut monitor = Monitor::start(&broker, "devices/#").await;
    let upstream = format!("127.0.0.1:{}", broker.port);
    let mqtls = Binary::start(&pki, &upstream, &["--accept-proxy-protocol", "--proxy-protocol-from", "127.0.0.1/32"]);
    let port = mqtls.port;
    let device = pki.ca.client("device-42");
    let (c, k) = device.write(pki.dir.path(), "device");
    for header in [v1_header(LB_CLIENT, LB_FRONTEND), v2_header(LB_CLIENT, LB_FRONTEND)] {
        let lb = fake_load_balancer(port, header).await;
        let mut args = mosquitto_tls_args(&pki, lb, Some((&c, &k)));
        args.extend(["-t", "devices/device-42/t", "-m", "via lb"].map(String::from));
        let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
        assert!(ok, "mosquitto_pub through the load balancer: {err}");
        assert_eq!(monitor.next().await, ("devices/device-42/t".to_string(), b"via lb".to_vec()));
    }
    assert_eq!(broker.usernames(), vec!["monitor", "device-42", "device-42"]);
    let opened = || -> Vec<serde_json::Value> {
        mqtls
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "open")
            .collect()
    };
    eventually("two open lines", || {
        let n = opened().len();
        async move { n == 2 }
    })
    .await;
    for line in opened() {
        assert_eq!(line["span"]["peer"], LB_CLIENT, "{line}");
        assert_eq!(line["span"]["identity"], "device-42", "{line}");
        let via = line["span"]["proxied_by"].as_str().unwrap_or_default().to_string();
        assert!(via.starts_with("127.0.0.1:"), "{line}");
    }
}
