//! Authorization at the edge and the client-id policy, end to end: real Mosquitto behind mqtls, raw
//! MQTT clients over TLS in front. Each test states one behaviour.

mod common;

use common::*;
use mqtls::config::{ClientAuth, ClientIdPolicy, Config};
use mqtls::x509::rules::{RuleKind, Rules};
use rcgen::{DnType, SanType};
use tokio::io::AsyncWriteExt;

/// CONNACK "not authorized": 3.1.1 return code 5, 5.0 reason code 0x87.
const NOT_AUTHORIZED_V4: [u8; 4] = [0x20, 0x02, 0x00, 0x05];
const NOT_AUTHORIZED_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x87, 0x00];
/// CONNACK "identifier rejected": 3.1.1 return code 2, 5.0 reason code 0x85.
const ID_REJECTED_V4: [u8; 4] = [0x20, 0x02, 0x00, 0x02];
const ID_REJECTED_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x85, 0x00];

struct Setup {
    pki: Pki,
    broker: Mosquitto,
    proxy: Mqtls,
}

/// Mosquitto and in-process mqtls; `extra_ca` is trusted for client certificates too.
async fn setup(extra_ca: Option<&Ca>, edit: impl FnOnce(&mut Config)) -> Setup {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    if let Some(ca) = extra_ca {
        let bundle = pki.path("client-cas.pem");
        write_file(&bundle, &format!("{}{}", pki.ca.pem, ca.pem));
        config.listeners[0].tls.client_ca = Some(bundle);
    }
    edit(&mut config);
    let proxy = Mqtls::start(config).await;
    Setup { pki, broker, proxy }
}

fn rules(kind: RuleKind, patterns: &[&str]) -> Rules {
    let mut r = Rules::default();
    r.set(kind, &patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).expect("valid globs");
    r
}

/// Connects over TLS presenting `leaf` and sends a CONNECT (protocol level 4 or 5) with `client_id`.
async fn connect(
    s: &Setup,
    leaf: Option<&Leaf>,
    level: u8,
    client_id: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = tls_connect(s.proxy.port(), client_tls(&s.pki, leaf)).await.expect("TLS handshake");
    tls.write_all(&packet::connect(level, client_id, None, None)).await.expect("send CONNECT");
    tls
}

/// The client is refused by mqtls with exactly `ack` and the connection is closed.
async fn expect_refused(s: &Setup, leaf: Option<&Leaf>, level: u8, client_id: &str, ack: &[u8]) {
    let mut tls = connect(s, leaf, level, client_id).await;
    assert_eq!(read_to_close(&mut tls).await, ack, "{client_id}: CONNACK then close");
}

/// The client gets the broker's CONNACK "accepted" and stays connected; returns its stream.
async fn expect_accepted(
    s: &Setup,
    leaf: Option<&Leaf>,
    level: u8,
    client_id: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = connect(s, leaf, level, client_id).await;
    let (first, body) = read_packet(&mut tls).await.expect("CONNACK");
    assert_eq!(first, 0x20, "{client_id}: CONNACK");
    assert_eq!(body.get(1), Some(&0), "{client_id}: accepted by the broker");
    tls
}

/// Still connected: a PINGREQ gets its PINGRESP.
async fn expect_alive(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, who: &str) {
    tls.write_all(&packet::PINGREQ).await.expect("send PINGREQ");
    let (first, _) = read_packet(tls).await.unwrap_or_else(|e| panic!("{who}: no PINGRESP ({e})"));
    assert_eq!(first, 0xD0, "{who}: PINGRESP");
}

fn refusals(s: &Setup, reason: &str) -> u64 {
    s.proxy.metric(&format!("mqtls_connect_refusals_total{{reason=\"{reason}\"}}")) as u64
}

/// The allow-rule matrix for one kind: every `allowed` certificate reaches the broker in 3.1.1 and
/// 5.0; every `refused` one gets "not authorized" in its version, is counted, and never reaches it.
async fn allow_matrix(s: &Setup, allowed: &[(&str, Leaf)], refused: &[(&str, Leaf)]) {
    for (name, leaf) in refused {
        expect_refused(s, Some(leaf), 4, &format!("refused-{name}-v4"), &NOT_AUTHORIZED_V4).await;
        expect_refused(s, Some(leaf), 5, &format!("refused-{name}-v5"), &NOT_AUTHORIZED_V5).await;
    }
    for (name, leaf) in allowed {
        for level in [4, 5] {
            let id = format!("allowed-{name}-v{level}");
            let mut tls = expect_accepted(s, Some(leaf), level, &id).await;
            s.broker.expect_log(&format!(" as {id} ")).await;
            tls.write_all(&packet::DISCONNECT).await.expect("DISCONNECT");
        }
    }
    assert!(!s.broker.log().contains("refused-"), "a refused client reached the broker:\n{}", s.broker.log());
    assert_eq!(refusals(s, "not_allowed"), 2 * refused.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_cn_admits_matching_cns_only() {
    let s = setup(None, |c| c.listeners[0].authz = rules(RuleKind::Cn, &["device-*"])).await;
    let ca = &s.pki.ca;
    allow_matrix(
        &s,
        &[("cn", ca.client("device-7"))],
        &[("cn", ca.client("sensor-7")), ("cn-case", ca.client("Device-7"))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_ou_admits_certificates_with_a_matching_ou() {
    let s = setup(None, |c| c.listeners[0].authz = rules(RuleKind::Ou, &["Fleet A"])).await;
    let with_ou = |ou: &str| {
        s.pki.ca.issue(true, |p| {
            p.distinguished_name.push(DnType::CommonName, "device-1");
            p.distinguished_name.push(DnType::OrganizationalUnitName, ou);
        })
    };
    allow_matrix(
        &s,
        &[("ou", with_ou("Fleet A"))],
        &[("ou", with_ou("Fleet B")), ("no-ou", s.pki.ca.client("device-1"))],
    )
    .await;
}

fn with_sans(ca: &Ca, sans: Vec<SanType>) -> Leaf {
    ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "device-1");
        p.subject_alt_names = sans;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_dns_admits_certificates_with_a_matching_dns_name() {
    let s = setup(None, |c| c.listeners[0].authz = rules(RuleKind::Dns, &["*.fleet.example.org"])).await;
    let dns = |d: &str| with_sans(&s.pki.ca, vec![SanType::DnsName(d.try_into().expect("ia5"))]);
    allow_matrix(
        &s,
        &[("dns", dns("d1.fleet.example.org"))],
        &[("dns", dns("d1.fleet.example.org.evil.example")), ("dns-other", dns("d1.example.org"))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_uri_glob_stays_within_one_path_segment() {
    let s = setup(None, |c| c.listeners[0].authz = rules(RuleKind::Uri, &["spiffe://example.org/sensors/*"])).await;
    let uri = |u: &str| with_sans(&s.pki.ca, vec![SanType::URI(u.try_into().expect("ia5"))]);
    allow_matrix(
        &s,
        &[("uri", uri("spiffe://example.org/sensors/7"))],
        &[
            ("uri-deeper", uri("spiffe://example.org/sensors/7/admin")),
            ("uri", uri("spiffe://example.org/actuators/7")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_issuer_admits_certificates_of_the_named_ca_only() {
    let other = Ca::new("Other CA");
    // Both CAs are trusted for the handshake; only the test CA is allowed.
    let s = setup(Some(&other), |c| c.listeners[0].authz = rules(RuleKind::Issuer, &["CN=mqtls test CA"])).await;
    allow_matrix(&s, &[("issuer", s.pki.ca.client("device-1"))], &[("issuer", other.client("device-1"))]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_a_certificate_is_not_subject_to_the_rules() {
    let s = setup(None, |c| {
        c.listeners[0].tls.client_auth = ClientAuth::Optional;
        c.listeners[0].authz = rules(RuleKind::Cn, &["nobody"]);
    })
    .await;
    let _anon = expect_accepted(&s, None, 4, "anonymous-client").await;
    s.broker.expect_log(" as anonymous-client ").await;
    // A certificate that is presented is checked.
    expect_refused(&s, Some(&s.pki.ca.client("device-1")), 4, "refused-with-cert", &NOT_AUTHORIZED_V4).await;
    assert!(!s.broker.log().contains("refused-with-cert"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_from_identity_a_second_device_kicks_the_first_off_a_shared_client_id() {
    let s = setup(None, |_| {}).await;
    let (a, b) = (s.pki.ca.client("dev-a"), s.pki.ca.client("dev-b"));
    let mut first = expect_accepted(&s, Some(&a), 4, "shared").await;
    s.broker.expect_log(" as shared ").await;
    let _second = expect_accepted(&s, Some(&b), 4, "shared").await;
    s.broker.expect_log("Client shared already connected, closing old connection").await;
    // The broker closed the first device's connection: mqtls passes the close on.
    read_to_close(&mut first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn from_identity_gives_each_device_its_own_client_id() {
    let s = setup(None, |c| c.listeners[0].identity.client_id = ClientIdPolicy::FromIdentity).await;
    let (a, b) = (s.pki.ca.client("dev-a"), s.pki.ca.client("dev-b"));
    let mut first = expect_accepted(&s, Some(&a), 4, "shared").await;
    let mut second = expect_accepted(&s, Some(&b), 5, "shared").await;
    s.broker.expect_log(" as dev-a (p2, c1, k30, u'dev-a')").await;
    s.broker.expect_log(" as dev-b (p5, c1, k30, u'dev-b')").await;
    expect_alive(&mut first, "dev-a").await;
    expect_alive(&mut second, "dev-b").await;
    let log = s.broker.log();
    assert!(!log.contains("already connected"), "a session was taken over:\n{log}");
    assert!(!log.contains(" as shared "), "the broker saw the client's own id:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_prefix_refuses_a_client_id_not_starting_with_the_identity() {
    let s = setup(None, |c| c.listeners[0].identity.client_id = ClientIdPolicy::RequirePrefix).await;
    let a = s.pki.ca.client("dev-a");
    expect_refused(&s, Some(&a), 4, "dev-b", &ID_REJECTED_V4).await;
    expect_refused(&s, Some(&a), 5, "shared", &ID_REJECTED_V5).await;
    let _ok = expect_accepted(&s, Some(&a), 4, "dev-a/telemetry").await;
    s.broker.expect_log(" as dev-a/telemetry ").await;
    let log = s.broker.log();
    assert!(!log.contains(" as dev-b ") && !log.contains(" as shared "), "a refused client reached the broker:\n{log}");
    assert_eq!(refusals(&s, "client_id_rejected"), 2);
}

/// The real binary with a config file: rules changed in the file take effect on SIGHUP; an invalid
/// file keeps the rules in service; a changed setting that needs a restart is named in the log.
#[tokio::test(flavor = "multi_thread")]
async fn allow_rules_reload_from_the_config_file_on_sighup() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let file = pki.path("mqtls.toml");
    write_file(&file, "allow_cn = [\"alpha\"]\n");
    let mut mqtls = Binary::start(
        &pki,
        &format!("127.0.0.1:{}", broker.port),
        &["--config", file.to_str().expect("utf-8 path"), "--reload-interval", "off"],
    );
    let port = mqtls.port;
    let alpha = client_tls(&pki, Some(&pki.ca.client("alpha")));
    let beta = client_tls(&pki, Some(&pki.ca.client("beta")));
    assert!(mqtt_accepted(port, alpha.clone()).await, "alpha allowed: {}", mqtls.log());
    assert!(!mqtt_accepted(port, beta.clone()).await, "beta refused");
    eventually("the refusal is logged with its reason", || async { mqtls.log().contains("\"not_allowed\"") }).await;

    let hup = |pid: u32| {
        let ok = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill");
        assert!(ok.success());
    };
    write_file(&file, "allow_cn = [\"beta\"]\nmax_connections = 10\n");
    hup(mqtls.pid());
    wait_accepted(port, &beta, true, WAIT).await;
    assert!(!mqtt_accepted(port, alpha.clone()).await, "alpha refused after the reload");
    // The new rules go into service before the reload's last line is written.
    eventually("the reload's restart line is logged", || async { mqtls.log().contains("need a restart") }).await;
    let log = mqtls.log();
    assert!(log.contains("allow rules reloaded"), "{log}");
    let restart =
        log.lines().find(|l| l.contains("need a restart")).unwrap_or_else(|| panic!("no restart line: {log}"));
    assert!(restart.contains("max_connections") && !restart.contains("allow_cn"), "{restart}");

    // A file that doesn't validate changes nothing.
    write_file(&file, "allow_cn = [\"be[ta\"]\n");
    hup(mqtls.pid());
    eventually("the failed reload is logged", || async { mqtls.log().contains("configuration reload failed") }).await;
    assert!(mqtls.log().contains("allow_cn (in "), "the error names the setting: {}", mqtls.log());
    assert!(mqtt_accepted(port, beta.clone()).await, "beta still allowed");
    assert!(!mqtt_accepted(port, alpha).await, "alpha still refused");
    assert!(mqtls.running(), "SIGHUP stopped mqtls: {}", mqtls.log());
    // alpha reached the broker only while the first rules were in service.
    assert_eq!(broker.usernames().iter().filter(|u| *u == "alpha").count(), 1, "{}", broker.log());
}
