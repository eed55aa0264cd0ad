//! Session-ticket keys shared by replicas (`ticket_keys`): two mqtls instances reading one key file in
//! front of one Mosquitto resume each other's tickets, a rotated file keeps old tickets and seals new
//! ones with the new key, and a client-CA or CRL change still ends every ticket minted before it, on
//! both replicas, although the keys are shared.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use mqtls::config::{Config, ReloadSettings};
use mqtls::conn::upstream::Upstream;
use mqtls::reload::{ReloadReason, Reloader};
use rustls::version::{TLS12, TLS13};
use rustls::{HandshakeKind, SupportedProtocolVersion};

/// A fresh key, made the way the documentation says (`openssl rand -base64 80 | tr -d '\n'`).
fn new_key() -> String {
    let openssl = require_tool("openssl", "openssl");
    let out = std::process::Command::new(openssl).args(["rand", "-base64", "80"]).output().expect("openssl rand");
    assert!(out.status.success(), "openssl rand failed");
    String::from_utf8(out.stdout).expect("base64").replace('\n', "")
}

/// Writes the key file as an operator would: a comment, then one key per line.
fn write_keys(path: &Path, keys: &[&str]) {
    replace_by_rename(path, &format!("# mqtls session-ticket keys, newest first\n{}\n", keys.join("\n")));
}

/// One device: its certificate and its own session store, speaking only `version`.
fn device(pki: &Pki, leaf: &Leaf, version: &'static SupportedProtocolVersion) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(mqtls::tls::provider())
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![leaf.der.clone()], leaf.key_der())
        .expect("client cert");
    Arc::new(config)
}

/// Two replicas with the same settings (the same key file, CA bundle and CRLs) in front of one broker,
/// reloaded when the test says.
struct Replicas {
    pki: Pki,
    broker: Mosquitto,
    keys: PathBuf,
    a: (Mqtls, Arc<Reloader>),
    b: (Mqtls, Arc<Reloader>),
}

impl Replicas {
    async fn start(keys: Option<&[&str]>, edit: impl Fn(&Pki, &mut Config)) -> Replicas {
        init_logs();
        let pki = Pki::new();
        let broker = Mosquitto::start();
        let path = pki.path("ticket.keys");
        if let Some(keys) = keys {
            write_keys(&path, keys);
        }
        let config = || {
            let mut config = pki.config(broker.upstream());
            config.global.reload = ReloadSettings { interval: None, watch: false, ..ReloadSettings::default() };
            config.listeners[0].tls.ticket_keys = keys.map(|_| path.clone());
            edit(&pki, &mut config);
            config
        };
        let a = Mqtls::start_reloading(config()).await;
        let b = Mqtls::start_reloading(config()).await;
        Replicas { pki, broker, keys: path, a, b }
    }

    fn a(&self) -> u16 {
        self.a.0.port()
    }

    fn b(&self) -> u16 {
        self.b.0.port()
    }

    fn reload_both(&self) {
        for (_, reloader) in [&self.a, &self.b] {
            reloader.reload(ReloadReason::Sighup).expect("reload");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_from_one_replica_resumes_on_the_other() {
    resumes_across_replicas(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls12_ticket_from_one_replica_resumes_on_the_other() {
    resumes_across_replicas(&TLS12).await;
}

async fn resumes_across_replicas(version: &'static SupportedProtocolVersion) {
    let r = Replicas::start(Some(&[&new_key()]), |_, _| {}).await;
    let client = device(&r.pki, &r.pki.ca.client("device-42"), version);
    assert_eq!(mqtt_session(r.a(), client.clone()).await.expect("first"), HandshakeKind::Full);
    assert_eq!(mqtt_session(r.b(), client.clone()).await.expect("on B"), HandshakeKind::Resumed);
    assert_eq!(mqtt_session(r.a(), client.clone()).await.expect("back on A"), HandshakeKind::Resumed);
    assert_eq!(r.broker.usernames(), ["device-42"; 3], "a resumed session maps the same certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_shared_keys_a_ticket_resumes_only_on_its_own_replica() {
    for version in [&TLS13, &TLS12] {
        let r = Replicas::start(None, |_, _| {}).await;
        let client = device(&r.pki, &r.pki.ca.client("device-42"), version);
        assert_eq!(mqtt_session(r.a(), client.clone()).await.expect("first"), HandshakeKind::Full);
        assert_eq!(mqtt_session(r.b(), client.clone()).await.expect("on B"), HandshakeKind::Full, "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_file_keeps_old_tickets_and_seals_new_ones_with_the_new_key() {
    rotation(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_file_keeps_old_tls12_tickets_and_seals_new_ones_with_the_new_key() {
    rotation(&TLS12).await;
}

async fn rotation(version: &'static SupportedProtocolVersion) {
    let (old, new) = (new_key(), new_key());
    let r = Replicas::start(Some(&[&old]), |_, _| {}).await;
    let pki = &r.pki;
    let (resumer, idle) =
        (device(pki, &pki.ca.client("resumer"), version), device(pki, &pki.ca.client("idle"), version));
    for client in [&resumer, &idle] {
        assert_eq!(mqtt_session(r.a(), client.clone()).await.expect("first"), HandshakeKind::Full);
    }

    // Rotation: the new key first, the old one kept for the tickets sealed under it.
    write_keys(&r.keys, &[&new, &old]);
    for (_, reloader) in [&r.a, &r.b] {
        match reloader.reload(ReloadReason::Sighup).expect("reload") {
            mqtls::reload::ReloadOutcome::Reloaded { changed, .. } => {
                assert_eq!(changed, std::slice::from_ref(&r.keys))
            }
            other => panic!("the key file change was not loaded: {other:?}"),
        }
    }
    assert_eq!(mqtt_session(r.b(), resumer.clone()).await.expect("old ticket"), HandshakeKind::Resumed);
    let fresh = device(pki, &pki.ca.client("fresh"), version);
    assert_eq!(mqtt_session(r.a(), fresh.clone()).await.expect("after rotation"), HandshakeKind::Full);

    // The old key dropped: tickets sealed since the rotation resume (they are under the new key), the
    // one sealed before it does not.
    write_keys(&r.keys, &[&new]);
    r.reload_both();
    assert_eq!(mqtt_session(r.b(), fresh.clone()).await.expect("new ticket"), HandshakeKind::Resumed);
    assert_eq!(mqtt_session(r.a(), resumer.clone()).await.expect("renewed ticket"), HandshakeKind::Resumed);
    assert_eq!(mqtt_session(r.b(), idle.clone()).await.expect("old key gone"), HandshakeKind::Full);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_ca_change_ends_shared_tickets_on_both_replicas() {
    ca_change(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_ca_change_ends_shared_tls12_tickets_on_both_replicas() {
    ca_change(&TLS12).await;
}

/// The replicas share the keys, so only the trust recorded in each ticket can tell a ticket from
/// before the change: B reloads first and refuses A's ticket; then A refuses its own.
async fn ca_change(version: &'static SupportedProtocolVersion) {
    let r = Replicas::start(Some(&[&new_key()]), |_, _| {}).await;
    let pki = &r.pki;
    let (one, two) = (device(pki, &pki.ca.client("one"), version), device(pki, &pki.ca.client("two"), version));
    for client in [&one, &two] {
        assert_eq!(mqtt_session(r.a(), client.clone()).await.expect("first"), HandshakeKind::Full);
    }

    let other = Ca::new("second CA");
    replace_by_rename(&pki.ca_file, &format!("{}{}", pki.ca.pem, other.pem));
    r.b.1.reload(ReloadReason::Sighup).expect("reload B");
    assert_eq!(mqtt_session(r.b(), one.clone()).await.expect("on B"), HandshakeKind::Full, "B refuses A's old ticket");
    r.a.1.reload(ReloadReason::Sighup).expect("reload A");
    assert_eq!(mqtt_session(r.a(), two.clone()).await.expect("on A"), HandshakeKind::Full, "A refuses its own");
    // Tickets minted under the new trust are shared again.
    assert_eq!(mqtt_session(r.a(), one.clone()).await.expect("new ticket"), HandshakeKind::Resumed);
    assert_eq!(mqtt_session(r.b(), two.clone()).await.expect("new ticket"), HandshakeKind::Resumed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_cannot_come_back_with_a_shared_ticket() {
    revocation(&TLS13).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_cannot_come_back_with_a_shared_tls12_ticket() {
    revocation(&TLS12).await;
}

async fn revocation(version: &'static SupportedProtocolVersion) {
    // Written once: two signings of the same CRL differ (ECDSA), and so would the replicas' trust.
    let crl_pem = std::sync::OnceLock::new();
    let r = Replicas::start(Some(&[&new_key()]), |pki, config| {
        let crl = pki.path("ca.crl");
        crl_pem.get_or_init(|| std::fs::write(&crl, pki.ca.crl(&[])).expect("empty crl"));
        config.listeners[0].tls.crls = vec![crl];
    })
    .await;
    let pki = &r.pki;
    let stolen = pki.ca.issue(true, |p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, "stolen");
        p.serial_number = Some(rcgen::SerialNumber::from(4242u64));
    });
    // The same certificate on two boxes, each with a ticket from A; both resume anywhere.
    let (first, second) = (device(pki, &stolen, version), device(pki, &stolen, version));
    for client in [&first, &second] {
        assert_eq!(mqtt_session(r.a(), client.clone()).await.expect("first"), HandshakeKind::Full);
        assert_eq!(mqtt_session(r.b(), client.clone()).await.expect("shared"), HandshakeKind::Resumed);
    }

    replace_by_rename(&pki.path("ca.crl"), &pki.ca.crl(&[4242]));
    r.reload_both();
    assert!(mqtt_session(r.b(), first.clone()).await.is_err(), "no resumption on B, and the full handshake fails");
    assert!(mqtt_session(r.a(), second.clone()).await.is_err(), "no resumption on A, and the full handshake fails");
    eventually("B counts the refused handshake as revoked", || async {
        r.b.0.metric(r#"mqtls_tls_handshake_failures_total{reason="revoked"}"#) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_key_file_stops_start_up_naming_ticket_keys_the_file_and_the_line() {
    let pki = Pki::new();
    let path = pki.path("ticket.keys");
    let short = &new_key()[..64];
    std::fs::write(&path, format!("# keys\n{}\n{short}\n", new_key())).expect("write");
    let mut config = pki.config(Upstream::Tcp { host: "127.0.0.1".into(), port: free_port() });
    config.listeners[0].tls.ticket_keys = Some(path.clone());
    let err = match mqtls::App::bind(config, None).await {
        Ok(_) => panic!("started with a malformed key file"),
        Err(err) => err.to_string(),
    };
    let want = format!("ticket_keys: {}: line 3: 48 bytes where a key has 80", path.display());
    assert!(err.contains(&want), "{err}");

    // The command line: one line on stderr, exit status 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtls"))
        .arg("check")
        .args(["--cert".as_ref(), pki.server_cert.as_os_str()])
        .args(["--key".as_ref(), pki.server_key.as_os_str()])
        .args(["--client-ca".as_ref(), pki.ca_file.as_os_str()])
        .args(["--ticket-keys".as_ref(), path.as_os_str()])
        .output()
        .expect("mqtls check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&want), "{stderr}");

    std::fs::write(&path, "# no key yet\n").expect("write");
    let mut config = pki.config(Upstream::Tcp { host: "127.0.0.1".into(), port: free_port() });
    config.listeners[0].tls.ticket_keys = Some(path.clone());
    let err = mqtls::App::bind(config, None).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(&format!("ticket_keys: {}: no key", path.display())), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_rewrite_keeps_the_keys_in_service_and_the_watch_loads_the_next_good_one() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    // Its own directory, as a mounted Secret would be: the watch must cover it.
    let dir = pki.path("ticket-keys");
    std::fs::create_dir(&dir).expect("dir");
    let path = dir.join("ticket.keys");
    let (old, new) = (new_key(), new_key());
    write_keys(&path, &[&old]);
    let mut config = pki.config(broker.upstream());
    config.global.reload = ReloadSettings { interval: None, watch: true, ..ReloadSettings::default() };
    config.listeners[0].tls.ticket_keys = Some(path.clone());
    let (proxy, _reloader) = Mqtls::start_reloading(config).await;
    let client = device(&pki, &pki.ca.client("device-42"), &TLS13);
    assert_eq!(mqtt_session(proxy.port(), client.clone()).await.expect("first"), HandshakeKind::Full);

    let reloads = |result: &str| {
        let n = proxy.metric(&format!("mqtls_tls_reloads_total{{result=\"{result}\"}}"));
        async move { n == 1.0 }
    };
    replace_by_rename(&path, "not a key\n");
    eventually("the bad key file is refused", || reloads("error")).await;
    assert_eq!(mqtt_session(proxy.port(), client.clone()).await.expect("kept"), HandshakeKind::Resumed);

    write_keys(&path, &[&new, &old]);
    eventually("the rotated key file is loaded", || reloads("ok")).await;
    assert_eq!(mqtt_session(proxy.port(), client.clone()).await.expect("rotated"), HandshakeKind::Resumed);
}
