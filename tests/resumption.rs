//! TLS session resumption: reconnect storms get cheap handshakes, but never at the cost of trust
//! changes or identity. Each behaviour holds for TLS 1.3 tickets and for TLS 1.2 tickets, which many
//! devices' TLS stacks still use.

mod common;

use common::*;
use mqtls::config::ReloadSettings;
use mqtls::reload::ReloadReason;
use rustls::{HandshakeKind, SupportedProtocolVersion};
use tokio::io::AsyncWriteExt;

use rustls::version::{TLS12, TLS13};

/// One device: its certificate and its own session store, speaking only `version`.
fn device(pki: &Pki, leaf: &Leaf, version: &'static SupportedProtocolVersion) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(mqtls::tls::provider())
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![leaf.der.clone()], leaf.key_der())
        .expect("client cert");
    std::sync::Arc::new(config)
}

/// The same device resuming TLS 1.2 sessions by session ID only (no tickets), as older stacks do.
fn device_by_session_id(pki: &Pki, leaf: &Leaf) -> std::sync::Arc<rustls::ClientConfig> {
    let mut config = (*device(pki, leaf, &TLS12)).clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16)
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    std::sync::Arc::new(config)
}

/// Connects, sends a CONNECT claiming `username`, waits for the CONNACK (which also delivers the
/// session ticket) and returns how the handshake went.
async fn session(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    username: &str,
) -> std::io::Result<HandshakeKind> {
    let mut tls = tls_connect(port, config).await?;
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(&packet::connect(4, "resumer", Some(username), None)).await?;
    let ack = read_exact_within(&mut tls, 4).await?;
    assert_eq!(ack, [0x20, 2, 0, 0]);
    tls.write_all(&packet::DISCONNECT).await?;
    read_to_close(&mut tls).await;
    Ok(kind)
}

/// mqtls in front of a real Mosquitto, reloaded only when the test says (no watch, no re-check).
struct Reloadable {
    pki: Pki,
    _broker: Mosquitto,
    proxy: Mqtls,
    reloader: std::sync::Arc<mqtls::reload::Reloader>,
}

async fn reloadable(edit: impl FnOnce(&Pki, &mut mqtls::config::Config)) -> Reloadable {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    config.global.reload = ReloadSettings { interval: None, watch: false, ..ReloadSettings::default() };
    edit(&pki, &mut config);
    let (proxy, reloader) = Mqtls::start_reloading(config).await;
    Reloadable { pki, _broker: broker, proxy, reloader }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_device_resumes_and_keeps_the_identity_of_its_certificate() {
    resumes_and_keeps_identity(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_tls12_device_resumes_and_keeps_the_identity_of_its_certificate() {
    resumes_and_keeps_identity(&TLS12).await;
}

async fn resumes_and_keeps_identity(version: &'static SupportedProtocolVersion) {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = Mqtls::start(pki.config(broker.upstream())).await;
    // One client configuration = one device with its session store.
    let config = device(&pki, &pki.ca.client("device-42"), version);
    assert_eq!(session(proxy.port(), config.clone(), "device-42").await.expect("first"), HandshakeKind::Full);
    assert_eq!(session(proxy.port(), config.clone(), "monitor").await.expect("second"), HandshakeKind::Resumed);
    assert_eq!(broker.usernames(), vec!["device-42", "device-42"], "the resumed session maps the same certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_are_counted_by_kind_and_version() {
    let Reloadable { pki, _broker, proxy, .. } = reloadable(|_, _| {}).await;
    for (version, connections) in [(&TLS13, 3), (&TLS12, 2)] {
        let client = device(&pki, &pki.ca.client("device-42"), version);
        for _ in 0..connections {
            session(proxy.port(), client.clone(), "x").await.expect("session");
        }
    }
    let text = proxy.metrics_text();
    for (query, value) in [
        (r#"mqtls_tls_handshakes_total{kind="full",version="1.3"}"#, 1.0),
        (r#"mqtls_tls_handshakes_total{kind="resumed",version="1.3"}"#, 2.0),
        (r#"mqtls_tls_handshakes_total{kind="full",version="1.2"}"#, 1.0),
        (r#"mqtls_tls_handshakes_total{kind="resumed",version="1.2"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, query), value, "{query} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_ca_change_makes_earlier_sessions_unresumable() {
    ca_change_ends_resumption(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_ca_change_makes_earlier_tls12_sessions_unresumable() {
    ca_change_ends_resumption(&TLS12).await;
}

async fn ca_change_ends_resumption(version: &'static SupportedProtocolVersion) {
    let Reloadable { pki, _broker, proxy, reloader } = reloadable(|_, _| {}).await;
    let client = device(&pki, &pki.ca.client("device-42"), version);
    session(proxy.port(), client.clone(), "x").await.expect("first");
    assert_eq!(session(proxy.port(), client.clone(), "x").await.expect("resumes"), HandshakeKind::Resumed);

    // The bundle gains a second CA: every session from before must do a full handshake again.
    let other = Ca::new("second CA");
    std::fs::write(&pki.ca_file, format!("{}{}", pki.ca.pem, other.pem)).expect("write bundle");
    reloader.reload(ReloadReason::Sighup).expect("reload");
    assert_eq!(session(proxy.port(), client.clone(), "x").await.expect("after reload"), HandshakeKind::Full);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_rotation_keeps_sessions_resumable() {
    rotation_keeps_resumption(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_rotation_keeps_tls12_sessions_resumable() {
    rotation_keeps_resumption(&TLS12).await;
}

/// A renewed server certificate (cert-manager, every few weeks) changes nothing about which devices
/// are trusted: their sessions resume as before, and only new sessions see the new certificate.
async fn rotation_keeps_resumption(version: &'static SupportedProtocolVersion) {
    let Reloadable { pki, _broker, proxy, reloader } = reloadable(|_, _| {}).await;
    let client = device(&pki, &pki.ca.client("device-42"), version);
    session(proxy.port(), client.clone(), "x").await.expect("first");

    let next = pki.ca.server("renewed");
    replace_by_rename(&pki.server_key, &next.key_pem);
    replace_by_rename(&pki.server_cert, &next.cert_pem);
    reloader.reload(ReloadReason::Sighup).expect("reload");
    assert_eq!(session(proxy.port(), client.clone(), "x").await.expect("after reload"), HandshakeKind::Resumed);
    // A device without a session gets the renewed certificate.
    let fresh = device(&pki, &pki.ca.client("device-7"), version);
    let tls = tls_connect(proxy.port(), fresh).await.expect("handshake");
    assert_eq!(tls.get_ref().1.peer_certificates().and_then(|c| c.first()), Some(&next.der));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_cannot_resume_its_session() {
    revocation_ends_resumption(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_cannot_resume_its_tls12_session() {
    revocation_ends_resumption(&TLS12).await;
}

async fn revocation_ends_resumption(version: &'static SupportedProtocolVersion) {
    let Reloadable { pki, _broker, proxy, reloader } = reloadable(|pki, config| {
        let crl = pki.path("ca.crl");
        std::fs::write(&crl, pki.ca.crl(&[])).expect("empty crl");
        config.listeners[0].tls.crls = vec![crl];
    })
    .await;
    let crl = pki.path("ca.crl");
    let stolen = pki.ca.issue(true, |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "stolen");
        p.serial_number = Some(rcgen::SerialNumber::from(4242u64));
    });
    let client = device(&pki, &stolen, version);
    session(proxy.port(), client.clone(), "x").await.expect("first");
    assert_eq!(session(proxy.port(), client.clone(), "x").await.expect("resumes"), HandshakeKind::Resumed);

    std::fs::write(&crl, pki.ca.crl(&[4242])).expect("revoke");
    reloader.reload(ReloadReason::Sighup).expect("reload");
    assert!(session(proxy.port(), client.clone(), "x").await.is_err(), "no resumption, and the full handshake fails");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_cannot_resume_its_session() {
    expiry_ends_resumption(|pki, leaf| device(pki, leaf, &TLS13)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_cannot_resume_its_tls12_ticket() {
    expiry_ends_resumption(|pki, leaf| device(pki, leaf, &TLS12)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_cannot_resume_its_tls12_session_id() {
    expiry_ends_resumption(device_by_session_id).await;
}

/// A certificate valid for a few seconds: its session resumes while it is valid; once it has expired,
/// the saved ticket or session gets no resumption, and the full handshake that follows refuses the
/// certificate exactly as a first connection with it would be refused (the same metric label).
async fn expiry_ends_resumption(make: fn(&Pki, &Leaf) -> std::sync::Arc<rustls::ClientConfig>) {
    let Reloadable { pki, _broker, proxy, .. } = reloadable(|_, _| {}).await;
    // X.509 times have whole seconds: the certificate is valid until `not_after` inclusive.
    let not_after = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("ns") + time::Duration::seconds(5);
    let leaf = pki.ca.issue(true, |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "short-lived");
        p.not_after = not_after;
    });
    let client = make(&pki, &leaf);
    assert_eq!(session(proxy.port(), client.clone(), "x").await.expect("first"), HandshakeKind::Full);
    assert_eq!(session(proxy.port(), client.clone(), "x").await.expect("before expiry"), HandshakeKind::Resumed);

    let past = not_after + time::Duration::milliseconds(1500) - time::OffsetDateTime::now_utc();
    tokio::time::sleep(past.try_into().unwrap_or_default()).await;
    assert!(session(proxy.port(), client.clone(), "x").await.is_err(), "the saved session must not bring it back");
    let expired = r#"mqtls_tls_handshake_failures_total{reason="expired"}"#;
    // Counted once the server side of the refused handshake has ended.
    eventually("refused as an expired certificate", || async { proxy.metric(expired) == 1.0 }).await;
    // The same as a device with that certificate and no session.
    assert!(session(proxy.port(), make(&pki, &leaf), "x").await.is_err(), "a full handshake is refused too");
    assert_eq!(_broker.usernames(), ["short-lived", "short-lived"], "only the two sessions before expiry");
}
