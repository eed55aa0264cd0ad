//! End to end: real Mosquitto behind mqtls, real clients in front. Each test states one behaviour.

mod common;

use std::time::Duration;

use common::*;
use mqtls::config::{ClientAuth, ClientUsername, PasswordPolicy};
use mqtls::conn::upstream::Upstream;
use mqtls::x509::identity::UsernameFrom;
use rcgen::{DnType, SanType};
use tokio::io::AsyncWriteExt;

/// Publishes one message through mqtls with mosquitto_pub and returns whether it succeeded.
async fn mosquitto_pub(pki: &Pki, port: u16, leaf: (&std::path::Path, &std::path::Path), extra: &[&str]) -> bool {
    let mut args = mosquitto_tls_args(pki, port, Some(leaf));
    args.extend(extra.iter().map(|s| s.to_string()));
    let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
    assert!(ok || !err.is_empty(), "mosquitto_pub failed silently");
    ok
}

async fn version_round_trip(version: &str) {
    let s = rig(|_| {}).await;
    let device = s.pki.ca.client("device-42");
    let (c, k) = device.write(s.pki.dir.path(), "device");
    let mut monitor = Monitor::start(&s.broker, "devices/#").await;
    assert!(
        mosquitto_pub(&s.pki, s.proxy.port(), (&c, &k), &["-V", version, "-t", "devices/device-42/t", "-m", "hello"])
            .await
    );
    assert_eq!(monitor.next().await, ("devices/device-42/t".to_string(), b"hello".to_vec()));
    assert_eq!(s.broker.usernames(), vec!["monitor", "device-42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt31_client_reaches_the_broker_as_its_certificate_cn() {
    version_round_trip("mqttv31").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt311_client_reaches_the_broker_as_its_certificate_cn() {
    version_round_trip("mqttv311").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_client_reaches_the_broker_as_its_certificate_cn() {
    version_round_trip("mqttv5").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_username_is_overwritten_and_the_acl_applies_to_the_identity() {
    let s = rig(|_| {}).await;
    let device = s.pki.ca.client("device-42");
    let (c, k) = device.write(s.pki.dir.path(), "device");
    let mut monitor = Monitor::start(&s.broker, "#").await;
    // Claims to be the all-powerful monitor user and writes to another device's topic.
    assert!(
        mosquitto_pub(
            &s.pki,
            s.proxy.port(),
            (&c, &k),
            &["-u", "monitor", "-P", "secret", "-t", "devices/other/t", "-m", "x"]
        )
        .await
    );
    s.broker.expect_log("Denied PUBLISH").await;
    monitor.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(s.broker.usernames(), vec!["monitor", "device-42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn username_and_password_are_replaced_and_every_other_byte_is_kept() {
    init_logs();
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let proxy = Mqtls::start(pki.config(upstream)).await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    tls.write_all(&packet::connect(4, "client-7", Some("admin"), Some(b"hunter2"))).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    let got = tokio::time::timeout(WAIT, captured).await.expect("captured in time").expect("captured");
    assert_eq!(got, packet::connect(4, "client-7", Some("device-42"), None));
}

#[tokio::test(flavor = "multi_thread")]
async fn password_keep_passes_the_password_on() {
    init_logs();
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let mut config = pki.config(upstream);
    config.listeners[0].identity.password = PasswordPolicy::Keep;
    let proxy = Mqtls::start(config).await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    tls.write_all(&packet::connect(5, "c", None, Some(b"pw"))).await.expect("write");
    read_exact_within(&mut tls, 4).await.expect("connack");
    let got = tokio::time::timeout(WAIT, captured).await.expect("in time").expect("captured");
    assert_eq!(got, packet::connect(5, "c", Some("device-42"), Some(b"pw")));
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_mode_refuses_a_different_username_with_connack_not_authorized() {
    let s = rig(|c| c.listeners[0].identity.client_username = ClientUsername::Reject).await;
    let device = s.pki.ca.client("device-42");
    for (level, expected) in [(3u8, vec![0x20, 2, 0, 5]), (4, vec![0x20, 2, 0, 5]), (5, vec![0x20, 3, 0, 0x87, 0])] {
        let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&device))).await.expect("tls");
        tls.write_all(&packet::connect(level, "c", Some("device-43"), None)).await.expect("write");
        assert_eq!(read_to_close(&mut tls).await, expected, "level {level}");
    }
    assert!(s.broker.usernames().is_empty(), "refused clients never reach the broker");
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_mode_accepts_the_matching_or_an_absent_username() {
    let s = rig(|c| c.listeners[0].identity.client_username = ClientUsername::Reject).await;
    let device = s.pki.ca.client("device-42");
    for username in [Some("device-42"), None] {
        let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&device))).await.expect("tls");
        tls.write_all(&packet::connect(4, "c", username, None)).await.expect("write");
        assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    }
    assert_eq!(s.broker.usernames(), vec!["device-42", "device-42"]);
}

/// Connects with `leaf` under `from` and returns the username the broker logged.
async fn broker_username(from: UsernameFrom, leaf: &Leaf, s: &Rig) -> String {
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(leaf))).await.expect("tls");
    tls.write_all(&packet::connect(4, "c", None, None)).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0], "{from:?}");
    s.broker.usernames().pop().expect("broker saw a client")
}

async fn identity_source(from: UsernameFrom, edit: impl FnOnce(&mut rcgen::CertificateParams), expected: &str) {
    let s = rig(|c| c.listeners[0].identity.username_from = from).await;
    let leaf = s.pki.ca.issue(true, edit);
    assert_eq!(broker_username(from, &leaf, &s).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn username_from_subject_is_what_openssl_prints_as_rfc2253() {
    let s = rig(|c| c.listeners[0].identity.username_from = UsernameFrom::Subject).await;
    let leaf = s.pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CountryName, "GB");
        p.distinguished_name.push(DnType::OrganizationName, "Acme, Inc.");
        p.distinguished_name.push(DnType::CommonName, "device-42");
    });
    let (cert, _) = leaf.write(s.pki.dir.path(), "subject");
    let openssl = require_tool("openssl", "openssl");
    let out = std::process::Command::new(openssl)
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl");
    let printed = String::from_utf8(out.stdout).expect("utf8");
    let expected = printed.trim().strip_prefix("subject=").expect("subject= prefix");
    assert!(expected.contains("O=Acme\\, Inc."), "{expected}");
    assert_eq!(broker_username(UsernameFrom::Subject, &leaf, &s).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn username_from_san_dns_is_the_first_dns_name() {
    identity_source(
        UsernameFrom::SanDns,
        |p| {
            p.distinguished_name.push(DnType::CommonName, "ignored");
            p.subject_alt_names = vec![
                SanType::DnsName("sensor-1.example.org".try_into().expect("dns")),
                SanType::DnsName("other.example.org".try_into().expect("dns")),
            ];
        },
        "sensor-1.example.org",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn username_from_san_uri_is_the_spiffe_id() {
    identity_source(
        UsernameFrom::SanUri,
        |p| p.subject_alt_names = vec![SanType::URI("spiffe://example.org/sensors/7".try_into().expect("uri"))],
        "spiffe://example.org/sensors/7",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn username_from_san_email_is_the_first_email() {
    identity_source(
        UsernameFrom::SanEmail,
        |p| p.subject_alt_names = vec![SanType::Rfc822Name("ops@example.org".try_into().expect("email"))],
        "ops@example.org",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn username_from_sha256_is_the_certificate_fingerprint() {
    let s = rig(|c| c.listeners[0].identity.username_from = UsernameFrom::Sha256).await;
    let leaf = s.pki.ca.client("device-42");
    let expected: String = {
        use sha2::Digest;
        sha2::Sha256::digest(leaf.der.as_ref()).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(broker_username(UsernameFrom::Sha256, &leaf, &s).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_without_the_selected_field_is_refused_as_not_authorized() {
    let s = rig(|c| c.listeners[0].identity.username_from = UsernameFrom::SanUri).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    tls.write_all(&packet::connect(5, "c", None, None)).await.expect("write");
    assert_eq!(read_to_close(&mut tls).await, [0x20, 3, 0, 0x87, 0]);
    assert!(s.broker.usernames().is_empty());
}

/// The `refused` log line names the reason the refusal is counted under in the metrics: a certificate
/// without a CN (username_from = cn, the default) is `no_identity` in both, and a device that leaves
/// after TLS without a CONNECT is `eof` in both (a warning: it is past TLS, not a port probe).
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_is_logged_with_the_reason_it_is_counted_under() {
    let pki = Pki::new();
    let admin = free_port();
    // Both refusals happen before the broker is contacted: nothing needs to listen upstream.
    let upstream = format!("127.0.0.1:{}", free_port());
    let mqtls = Binary::start(&pki, &upstream, &["--admin", &format!("127.0.0.1:{admin}")]);

    let no_cn = pki.ca.issue(true, |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Acme");
    });
    let mut tls = tls_connect(mqtls.port, client_tls(&pki, Some(&no_cn))).await.expect("handshake");
    tls.write_all(&packet::connect(4, "c", None, None)).await.expect("write");
    assert_eq!(read_to_close(&mut tls).await, [0x20, 2, 0, 5]);
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(mqtls.port, client_tls(&pki, Some(&device))).await.expect("handshake");
    tls.shutdown().await.expect("close_notify");
    assert_eq!(read_to_close(&mut tls).await, b"");

    let refused = || -> Vec<serde_json::Value> {
        let log = mqtls.log();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "refused")
            .collect()
    };
    eventually("two refused lines", || {
        let n = refused().len();
        async move { n == 2 }
    })
    .await;
    let (_, metrics) = http_get(([127, 0, 0, 1], admin).into(), "/metrics").await;
    let lines = refused();
    let expected = [("not_authorized", "no_identity"), ("connect_eof", "eof")];
    for (line, (outcome, reason)) in lines.iter().zip(expected) {
        assert_eq!((line["outcome"].as_str(), line["reason"].as_str()), (Some(outcome), Some(reason)), "{line}");
        assert_eq!(line["level"], "WARN", "{line}");
        let counted = format!("mqtls_connect_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &counted), 1.0, "{counted} in\n{metrics}");
        let outcome = format!("mqtls_connections_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&metrics, &outcome), 1.0, "{outcome} in\n{metrics}");
    }
}

/// A good client connects and round-trips a message: proof that a refusal hurt nobody else.
async fn good_client_round_trips(s: &Rig) {
    let device = s.pki.ca.client("device-1");
    let (c, k) = device.write(s.pki.dir.path(), "good");
    let mut monitor = Monitor::start(&s.broker, "devices/device-1/#").await;
    assert!(mosquitto_pub(&s.pki, s.proxy.port(), (&c, &k), &["-t", "devices/device-1/ok", "-m", "still here"]).await);
    assert_eq!(monitor.next().await.1, b"still here");
}

/// The handshake (or the first read after it, with TLS 1.3) fails for this client.
async fn handshake_refused(s: &Rig, leaf: Option<&Leaf>, trust: &Pki) {
    let result = async {
        let mut tls = tls_connect(s.proxy.port(), client_tls(trust, leaf)).await?;
        tls.write_all(&packet::connect(4, "c", None, None)).await?;
        tls.flush().await?;
        read_exact_within(&mut tls, 4).await
    }
    .await;
    assert!(result.is_err(), "handshake must fail, got {result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_without_certificate_is_refused_when_required() {
    let s = rig(|_| {}).await;
    handshake_refused(&s, None, &s.pki).await;
    good_client_round_trips(&s).await;
    assert_eq!(s.broker.usernames(), vec!["monitor", "device-1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_an_untrusted_ca_is_refused() {
    let s = rig(|_| {}).await;
    let rogue = Ca::new("rogue CA");
    let leaf = rogue.client("device-42");
    handshake_refused(&s, Some(&leaf), &s.pki).await;
    good_client_round_trips(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificate_is_refused() {
    let s = rig(|_| {}).await;
    let leaf = s.pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "device-42");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    handshake_refused(&s, Some(&leaf), &s.pki).await;
    good_client_round_trips(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_certificate_is_refused() {
    let pki = Pki::new();
    let crl = pki.path("revoked.crl");
    std::fs::write(&crl, pki.ca.crl(&[666])).expect("crl");
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    config.listeners[0].tls.crls = vec![crl];
    let proxy = Mqtls::start(config).await;
    let s = Rig { pki, broker, proxy };
    let revoked = s.pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "stolen");
        p.serial_number = Some(rcgen::SerialNumber::from(666u64));
    });
    handshake_refused(&s, Some(&revoked), &s.pki).await;
    good_client_round_trips(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_auth_passes_a_certificateless_client_unmodified() {
    let s = rig(|c| c.listeners[0].tls.client_auth = ClientAuth::Optional).await;
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, None)).await.expect("tls");
    tls.write_all(&packet::connect(4, "c", Some("password-device"), Some(b"pw"))).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(s.broker.usernames(), vec!["password-device"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_auth_maps_a_presented_certificate() {
    let s = rig(|c| c.listeners[0].tls.client_auth = ClientAuth::Optional).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    tls.write_all(&packet::connect(4, "c", Some("password-device"), Some(b"pw"))).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(s.broker.usernames(), vec!["device-42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_auth_still_refuses_an_untrusted_certificate() {
    let s = rig(|c| c.listeners[0].tls.client_auth = ClientAuth::Optional).await;
    let leaf = Ca::new("rogue").client("device-42");
    handshake_refused(&s, Some(&leaf), &s.pki).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_none_passes_the_connect_unmodified() {
    init_logs();
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let mut config = pki.config(upstream);
    config.listeners[0].tls.client_auth = ClientAuth::None;
    let proxy = Mqtls::start(config).await;
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, None)).await.expect("tls");
    let connect = packet::connect(4, "c", Some("user"), Some(b"pw"));
    tls.write_all(&connect).await.expect("write");
    read_exact_within(&mut tls, 4).await.expect("connack");
    assert_eq!(tokio::time::timeout(WAIT, captured).await.expect("in time").expect("captured"), connect);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_answers_connack_server_unavailable_in_the_client_version() {
    init_logs();
    let pki = Pki::new();
    // A port bound but not listening refuses connections, and no other test's broker can take it.
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let down = Upstream::Tcp { host: "127.0.0.1".into(), port: held.local_addr().expect("addr").port() };
    let proxy = Mqtls::start(pki.config(down)).await;
    let leaf = pki.ca.client("device-42");
    for (level, expected) in [(3u8, vec![0x20, 2, 0, 3]), (4, vec![0x20, 2, 0, 3]), (5, vec![0x20, 3, 0, 0x88, 0])] {
        let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&leaf))).await.expect("tls");
        tls.write_all(&packet::connect(level, "c", None, None)).await.expect("write");
        assert_eq!(read_to_close(&mut tls).await, expected, "level {level}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_upstream_works() {
    init_logs();
    let pki = Pki::new();
    let sock_dir = tempfile::tempdir().expect("dir");
    let sock = sock_dir.path().join("mqtt.sock");
    let broker = Mosquitto::start_with(&format!("listener 0 {}", sock.display()));
    let proxy = Mqtls::start(pki.config(Upstream::Unix(sock))).await;
    let leaf = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&leaf))).await.expect("tls");
    tls.write_all(&packet::connect(4, "c", None, None)).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(broker.usernames(), vec!["device-42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn packets_pipelined_behind_the_connect_reach_the_broker_in_order() {
    let s = rig(|_| {}).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    let mut burst = packet::connect(4, "pipeliner", None, None);
    burst.extend(packet::subscribe(4, 1, "devices/device-42/echo", 0));
    burst.extend(packet::publish_qos0(4, "devices/device-42/echo", b"ping"));
    tls.write_all(&burst).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(read_exact_within(&mut tls, 5).await.expect("suback"), [0x90, 3, 0, 1, 0]);
    let echo = packet::publish_qos0(4, "devices/device-42/echo", b"ping");
    assert_eq!(read_exact_within(&mut tls, echo.len()).await.expect("publish"), echo);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_split_over_many_tls_records_is_accepted() {
    let s = rig(|_| {}).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    for byte in packet::connect(5, "slow-but-steady", Some("x"), Some(b"y")) {
        tls.write_all(&[byte]).await.expect("write");
        tls.flush().await.expect("flush");
    }
    let ack = read_exact_within(&mut tls, 4).await.expect("connack");
    assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK success, got {ack:?}");
    assert_eq!(s.broker.usernames(), vec!["device-42"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_as_first_packet_is_closed_without_reaching_the_broker() {
    let s = rig(|_| {}).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    tls.write_all(&packet::publish_qos0(4, "t", b"x")).await.expect("write");
    assert_eq!(read_to_close(&mut tls).await, Vec::<u8>::new());
    assert!(!s.broker.log().contains("New client connected"), "broker untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_that_stalls_is_closed_at_the_deadline() {
    let s = rig(|c| c.global.limits.connect_timeout = Duration::from_millis(300)).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    let connect = packet::connect(4, "c", None, None);
    tls.write_all(&connect[..5]).await.expect("write");
    let started = std::time::Instant::now();
    assert_eq!(read_to_close(&mut tls).await, Vec::<u8>::new());
    assert!(started.elapsed() < WAIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_header_over_the_size_cap_is_refused_without_waiting_for_the_body() {
    let s = rig(|c| c.global.limits.max_connect_size = 1024).await;
    let leaf = s.pki.ca.client("device-42");
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, Some(&leaf))).await.expect("tls");
    tls.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await.expect("write");
    assert_eq!(read_to_close(&mut tls).await, Vec::<u8>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_mebibyte_payload_arrives_intact() {
    let s = rig(|_| {}).await;
    let leaf = s.pki.ca.client("device-42");
    let mut monitor = Monitor::start(&s.broker, "devices/#").await;
    let (client, mut events) =
        rumqttc::AsyncClient::new(rumqttc_options(&s.pki, s.proxy.port(), "big", Some(&leaf)), 10);
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    client.publish("devices/device-42/big", rumqttc::QoS::AtLeastOnce, false, payload.clone()).await.expect("publish");
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let (topic, got) = monitor.next().await;
    assert_eq!(topic, "devices/device-42/big");
    assert!(got == payload, "payload corrupted ({} bytes arrived)", got.len());
    driver.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_qos1_messages_arrive_intact_and_in_order() {
    let s = rig(|_| {}).await;
    let leaf = s.pki.ca.client("device-42");
    let mut monitor = Monitor::start(&s.broker, "devices/#").await;
    let (client, mut events) =
        rumqttc::AsyncClient::new(rumqttc_options(&s.pki, s.proxy.port(), "many", Some(&leaf)), 100);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let publisher = tokio::spawn(async move {
        for i in 0..2000u32 {
            client
                .publish("devices/device-42/seq", rumqttc::QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .expect("publish");
        }
        client
    });
    for i in 0..2000u32 {
        let (_, payload) = monitor.next().await;
        assert_eq!(payload, i.to_be_bytes(), "message {i} out of order");
    }
    let _client = publisher.await.expect("publisher");
    driver.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn qos2_is_delivered_exactly_once_through_the_proxy() {
    let s = rig(|_| {}).await;
    let sub_leaf = s.pki.ca.client("device-42");
    let pub_leaf = s.pki.ca.client("device-42");
    let (sc, sk) = sub_leaf.write(s.pki.dir.path(), "sub");
    let (pc, pk) = pub_leaf.write(s.pki.dir.path(), "pub");
    let mut sub_args = mosquitto_tls_args(&s.pki, s.proxy.port(), Some((&sc, &sk)));
    sub_args.extend(["-q", "2", "-t", "devices/device-42/q2", "-C", "1", "-W", "8", "-i", "sub2"].map(String::from));
    let sub = tokio::spawn(async move { run_tool("mosquitto_sub", &sub_args).await });
    s.broker.expect_log("SUBSCRIBE from sub2").await;
    s.broker.expect_log("Sending SUBACK to sub2").await;
    assert!(
        mosquitto_pub(&s.pki, s.proxy.port(), (&pc, &pk), &["-q", "2", "-t", "devices/device-42/q2", "-m", "once"])
            .await
    );
    let (ok, out, err) = sub.await.expect("sub");
    assert!(ok, "mosquitto_sub failed: {err}");
    assert_eq!(out, "once\n");
    s.broker.expect_log("Received PUBCOMP from sub2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_will_with_properties_is_published_after_an_abrupt_disconnect() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    let s = rig(|_| {}).await;

    // Monitor speaks MQTT 5 straight to the broker so it sees the will's properties.
    let mut mopts = rumqttc::v5::MqttOptions::new("monitor5", "127.0.0.1", s.broker.port);
    mopts.set_credentials("monitor", "");
    let (monitor, mut mevents) = rumqttc::v5::AsyncClient::new(mopts, 10);
    monitor.subscribe("devices/#", QoS::AtLeastOnce).await.expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mdriver = tokio::spawn(async move {
        while let Ok(ev) = mevents.poll().await {
            if let rumqttc::v5::Event::Incoming(p) = ev {
                let _ = tx.send(p);
            }
        }
    });
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await.expect("suback in time") {
            Some(Packet::SubAck(_)) => break,
            Some(_) => continue,
            None => panic!("monitor ended"),
        }
    }

    let leaf = s.pki.ca.client("device-42");
    let mut opts = rumqttc::v5::MqttOptions::new("dying", "localhost", s.proxy.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(client_tls(
        &s.pki,
        Some(&leaf),
    ))));
    let props = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("reason".into(), "power-loss".into())],
    };
    opts.set_last_will(LastWill::new("devices/device-42/status", "offline", QoS::AtLeastOnce, false, Some(props)));
    let (_client, mut events) = rumqttc::v5::AsyncClient::new(opts, 10);
    loop {
        match tokio::time::timeout(WAIT, events.poll()).await.expect("connack in time").expect("connected") {
            rumqttc::v5::Event::Incoming(Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    // Abrupt: the TCP connection goes away without DISCONNECT.
    drop(events);

    let will = loop {
        match tokio::time::timeout(WAIT, rx.recv()).await.expect("will in time") {
            Some(Packet::Publish(p)) => break p,
            Some(_) => continue,
            None => panic!("monitor ended"),
        }
    };
    assert_eq!(&will.topic[..], b"devices/device-42/status");
    assert_eq!(&will.payload[..], b"offline");
    let props = will.properties.expect("will properties forwarded");
    assert_eq!(props.user_properties, vec![("reason".to_string(), "power-loss".to_string())]);
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    mdriver.abort();
}
