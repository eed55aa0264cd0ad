//! Hot reload of TLS material: every way a file gets replaced, client CA and CRL rotation, the
//! triggers (watch, SIGHUP, periodic re-check), validation, and rotation under load. Each test states
//! one behaviour. Every wait is bounded.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mqtls::config::{Config, ReloadSettings};
use mqtls::conn::upstream::Upstream;
use mqtls::reload::{ReloadOutcome, ReloadReason, Reloader};
use mqtls::tls::TlsError;
use mqtls::x509::cert::Validity;
use rcgen::{DnType, SerialNumber};
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;

/// The issue's promise: new files are in use within 2 s of the write completing.
const RELOAD_DEADLINE: Duration = Duration::from_secs(2);

/// Long enough that the watcher (had it run) would certainly have reloaded: several debounces.
const SETTLE: Duration = Duration::from_millis(700);

fn watch_only() -> ReloadSettings {
    ReloadSettings { interval: None, debounce: Duration::from_millis(200), watch: true }
}

/// A broker address nothing listens on, for tests that only handshake.
fn no_upstream() -> Upstream {
    Upstream::Tcp { host: "127.0.0.1".into(), port: free_port() }
}

struct Rig {
    pki: Pki,
    proxy: Mqtls,
    reloader: Arc<Reloader>,
    /// A client holding a valid certificate of the test CA.
    client: Arc<rustls::ClientConfig>,
    _broker: Option<Mosquitto>,
}

impl Rig {
    async fn start(edit: impl FnOnce(&Pki, &mut Config)) -> Rig {
        Self::start_with(Pki::new(), None, edit).await
    }

    async fn start_with(pki: Pki, broker: Option<Mosquitto>, edit: impl FnOnce(&Pki, &mut Config)) -> Rig {
        init_logs();
        let mut config = pki.config(broker.as_ref().map_or_else(no_upstream, Mosquitto::upstream));
        config.global.reload = watch_only();
        edit(&pki, &mut config);
        let (proxy, reloader) = Mqtls::start_reloading(config).await;
        let device = pki.ca.client("device-1");
        let client = client_tls(&pki, Some(&device));
        Rig { pki, proxy, reloader, client, _broker: broker }
    }

    async fn presented(&self) -> CertificateDer<'static> {
        presented_cert(self.proxy.port(), self.client.clone()).await.expect("handshake with a valid client")
    }

    async fn wait_presented(&self, want: &Leaf) -> Duration {
        wait_presented(self.proxy.port(), &self.client, &want.der, RELOAD_DEADLINE).await
    }

    /// Asserts the server keeps presenting `want` for `SETTLE`, across several handshakes.
    async fn assert_still_presents(&self, want: &Leaf) {
        let until = Instant::now() + SETTLE;
        while Instant::now() < until {
            assert!(self.presented().await == want.der, "server switched certificates");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ways a file gets replaced

#[tokio::test(flavor = "multi_thread")]
async fn files_rewritten_in_place_are_served_within_two_seconds() {
    let rig = Rig::start(|_, _| {}).await;
    assert_eq!(rig.presented().await, rig.pki.server.der);
    let next = rig.pki.ca.server("rotated");
    write_file(&rig.pki.server_key, &next.key_pem);
    write_file(&rig.pki.server_cert, &next.cert_pem);
    let took = rig.wait_presented(&next).await;
    eprintln!("in-place rewrite served after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_replaced_by_rename_are_served_within_two_seconds() {
    let rig = Rig::start(|_, _| {}).await;
    let next = rig.pki.ca.server("rotated");
    replace_by_rename(&rig.pki.server_key, &next.key_pem);
    replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
    let took = rig.wait_presented(&next).await;
    eprintln!("rename served after {took:?}");
}

fn k8s_files<'a>(leaf: &'a Leaf, ca: &'a str) -> [(&'static str, &'a str); 3] {
    [("tls.crt", leaf.cert_pem.as_str()), ("tls.key", leaf.key_pem.as_str()), ("ca.crt", ca)]
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_secret_updates_are_served_each_time() {
    let pki = Pki::new();
    let mut volume = K8sVolume::create(&pki.path("secret"), &k8s_files(&pki.server, &pki.ca.pem));
    let paths = (volume.path("tls.crt"), volume.path("tls.key"), volume.path("ca.crt"));
    let rig = Rig::start_with(pki, None, |_, c| {
        c.listeners[0].tls.cert = paths.0.clone();
        c.listeners[0].tls.key = paths.1.clone();
        c.listeners[0].tls.client_ca = Some(paths.2.clone());
    })
    .await;
    assert_eq!(rig.presented().await, rig.pki.server.der);
    // Twice: the second update proves the watch survived the removal of the first timestamped dir.
    for round in 0..2 {
        let next = rig.pki.ca.server(&format!("k8s-{round}"));
        volume.update(&k8s_files(&next, &rig.pki.ca.pem));
        let took = rig.wait_presented(&next).await;
        eprintln!("kubernetes update {round} served after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_written_before_certificate_loads_only_as_a_pair() {
    let rig = Rig::start(|_, _| {}).await;
    let next = rig.pki.ca.server("rotated");
    replace_by_rename(&rig.pki.server_key, &next.key_pem);
    // Half a pair: refused (by any trigger), and the old pair stays in service.
    let err = rig.reloader.reload(ReloadReason::Sighup).expect_err("new key with old certificate");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    rig.assert_still_presents(&rig.pki.server).await;
    replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
    rig.wait_presented(&next).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_written_before_key_loads_only_as_a_pair() {
    let rig = Rig::start(|_, _| {}).await;
    let next = rig.pki.ca.server("rotated");
    replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
    let err = rig.reloader.reload(ReloadReason::Sighup).expect_err("new certificate with old key");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    rig.assert_still_presents(&rig.pki.server).await;
    replace_by_rename(&rig.pki.server_key, &next.key_pem);
    rig.wait_presented(&next).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_certificate_is_refused_and_the_next_good_write_loads() {
    let rig = Rig::start(|_, _| {}).await;
    let next = rig.pki.ca.server("rotated");
    write_file(&rig.pki.server_key, &next.key_pem);
    write_file(&rig.pki.server_cert, &next.cert_pem[..next.cert_pem.len() / 2]);
    let err = rig.reloader.reload(ReloadReason::Sighup).expect_err("half a certificate");
    assert!(err.to_string().contains(&rig.pki.server_cert.display().to_string()), "error names the file: {err}");
    rig.assert_still_presents(&rig.pki.server).await;
    write_file(&rig.pki.server_cert, &next.cert_pem);
    rig.wait_presented(&next).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_key_is_refused_and_the_next_good_write_loads() {
    let rig = Rig::start(|_, _| {}).await;
    let next = rig.pki.ca.server("rotated");
    replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
    replace_by_rename(&rig.pki.server_key, "this is not a key\n\x00\x01\x02");
    let err = rig.reloader.reload(ReloadReason::Sighup).expect_err("garbage key");
    assert!(err.to_string().starts_with("key: "), "error names the setting: {err}");
    assert!(err.to_string().contains(&rig.pki.server_key.display().to_string()), "error names the file: {err}");
    rig.assert_still_presents(&rig.pki.server).await;
    replace_by_rename(&rig.pki.server_key, &next.key_pem);
    rig.wait_presented(&next).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_files_keep_the_old_configuration_until_recreated() {
    let rig = Rig::start(|_, _| {}).await;
    std::fs::remove_file(&rig.pki.server_cert).expect("rm cert");
    std::fs::remove_file(&rig.pki.server_key).expect("rm key");
    rig.assert_still_presents(&rig.pki.server).await;
    let next = rig.pki.ca.server("recreated");
    write_file(&rig.pki.server_key, &next.key_pem);
    write_file(&rig.pki.server_cert, &next.cert_pem);
    rig.wait_presented(&next).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_directory_is_loaded_and_then_watched() {
    let pki = Pki::new();
    let tls_dir = pki.path("tls");
    std::fs::create_dir(&tls_dir).expect("tls dir");
    let (cert, key) = pki.server.write(&tls_dir, "server");
    let rig = Rig::start_with(pki, None, |_, c| {
        c.listeners[0].tls.cert = cert.clone();
        c.listeners[0].tls.key = key.clone();
    })
    .await;
    let next = rig.pki.ca.server("new-dir");
    let staged = rig.pki.path("tls.new");
    std::fs::create_dir(&staged).expect("staged dir");
    next.write(&staged, "server");
    std::fs::rename(&tls_dir, rig.pki.path("tls.old")).expect("move old dir away");
    std::fs::rename(&staged, &tls_dir).expect("move new dir in");
    std::fs::remove_dir_all(rig.pki.path("tls.old")).expect("remove old dir");
    rig.wait_presented(&next).await;
    // The new directory is watched too: an in-place write into it is picked up.
    let after = rig.pki.ca.server("after");
    after.write(&tls_dir, "server");
    rig.wait_presented(&after).await;
}

// ---------------------------------------------------------------------------------------------
// Client trust rotation

#[tokio::test(flavor = "multi_thread")]
async fn client_ca_added_to_the_bundle_admits_its_clients() {
    let rig = Rig::start_with(Pki::new(), Some(Mosquitto::start()), |_, _| {}).await;
    let other = Ca::new("second CA");
    let client = client_tls(&rig.pki, Some(&other.client("other-device")));
    assert!(!mqtt_accepted(rig.proxy.port(), client.clone()).await, "unknown CA refused at first");
    replace_by_rename(&rig.pki.ca_file, &format!("{}{}", rig.pki.ca.pem, other.pem));
    wait_accepted(rig.proxy.port(), &client, true, RELOAD_DEADLINE).await;
    assert!(mqtt_accepted(rig.proxy.port(), rig.client.clone()).await, "the first CA's clients still accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_ca_removed_from_the_bundle_refuses_its_clients() {
    let other = Ca::new("second CA");
    let pki = Pki::new();
    write_file(&pki.ca_file, &format!("{}{}", pki.ca.pem, other.pem));
    let rig = Rig::start_with(pki, Some(Mosquitto::start()), |_, _| {}).await;
    let client = client_tls(&rig.pki, Some(&other.client("other-device")));
    assert!(mqtt_accepted(rig.proxy.port(), client.clone()).await, "second CA's client accepted at first");
    replace_by_rename(&rig.pki.ca_file, &rig.pki.ca.pem);
    wait_accepted(rig.proxy.port(), &client, false, RELOAD_DEADLINE).await;
    assert!(mqtt_accepted(rig.proxy.port(), rig.client.clone()).await, "the remaining CA's clients still accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn crl_update_revokes_a_client_certificate() {
    let pki = Pki::new();
    let crl = pki.path("crl.pem");
    write_file(&crl, &pki.ca.crl(&[]));
    let rig = Rig::start_with(pki, Some(Mosquitto::start()), |_, c| c.listeners[0].tls.crls = vec![crl.clone()]).await;
    let victim = rig.pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "stolen-device");
        p.serial_number = Some(SerialNumber::from(4242u64));
    });
    let client = client_tls(&rig.pki, Some(&victim));
    assert!(mqtt_accepted(rig.proxy.port(), client.clone()).await, "not yet revoked");
    replace_by_rename(&crl, &rig.pki.ca.crl(&[4242]));
    wait_accepted(rig.proxy.port(), &client, false, RELOAD_DEADLINE).await;
    assert!(mqtt_accepted(rig.proxy.port(), rig.client.clone()).await, "other clients still accepted");
}

// ---------------------------------------------------------------------------------------------
// Triggers

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_at_once() {
    let rig = Rig::start(|_, c| {
        c.global.reload = ReloadSettings { interval: None, debounce: Duration::from_secs(1), watch: false }
    })
    .await;
    let next = rig.pki.ca.server("rotated");
    replace_by_rename(&rig.pki.server_key, &next.key_pem);
    replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
    // Nothing watches and nothing polls: the old pair stays until the signal.
    rig.assert_still_presents(&rig.pki.server).await;
    let status =
        std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().expect("run kill");
    assert!(status.success());
    let took = rig.wait_presented(&next).await;
    eprintln!("SIGHUP served after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_recheck_loads_changes_no_event_reported() {
    let period = Duration::from_millis(400);
    let rig = Rig::start(|_, c| {
        c.global.reload = ReloadSettings { interval: Some(period), debounce: Duration::ZERO, watch: false }
    })
    .await;
    let next = rig.pki.ca.server("rotated");
    replace_by_rename(&rig.pki.server_key, &next.key_pem);
    replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
    let took = wait_presented(rig.proxy.port(), &rig.client, &next.der, period + RELOAD_DEADLINE).await;
    assert!(took <= period + Duration::from_millis(500), "within one period (plus a handshake): {took:?}");
    eprintln!("periodic re-check served after {took:?}");
}

// ---------------------------------------------------------------------------------------------
// The reload itself

fn reloader(pki: &Pki, edit: impl FnOnce(&mut Config)) -> Result<Reloader, TlsError> {
    let mut config = pki.config(no_upstream());
    edit(&mut config);
    Reloader::new(config.listeners[0].tls.clone(), watch_only(), std::sync::Arc::default())
}

#[test]
fn unchanged_files_are_not_reloaded() {
    let pki = Pki::new();
    let r = reloader(&pki, |_| {}).expect("valid");
    assert_eq!(r.reload(ReloadReason::Poll).expect("ok"), ReloadOutcome::Unchanged);
    // Rewritten with the same bytes (a new inode, a new mtime): still the same content.
    replace_by_rename(&pki.server_cert, &pki.server.cert_pem);
    assert_eq!(r.reload(ReloadReason::Watch).expect("ok"), ReloadOutcome::Unchanged);
}

#[test]
fn reload_reports_the_changed_files_and_the_new_leaf() {
    let pki = Pki::new();
    let r = reloader(&pki, |_| {}).expect("valid");
    let next = pki.ca.issue(false, |p| {
        p.distinguished_name.push(DnType::CommonName, "rotated");
        p.serial_number = Some(SerialNumber::from(0x0102_0304u64));
    });
    replace_by_rename(&pki.server_cert, &next.cert_pem);
    replace_by_rename(&pki.server_key, &next.key_pem);
    let ReloadOutcome::Reloaded { changed, leaf } = r.reload(ReloadReason::Sighup).expect("ok") else {
        panic!("expected a reload")
    };
    assert_eq!(changed, vec![pki.server_cert.clone(), pki.server_key.clone()]);
    assert_eq!(leaf.subject, "CN=rotated");
    assert_eq!(leaf.serial, "01020304", "as `openssl x509 -serial` prints it");
    assert_eq!(leaf.not_after_rfc3339(), "2099-01-01T00:00:00Z");
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(next.der.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(leaf.sha256, sha256);
}

#[test]
fn failed_set_is_retried_until_it_loads() {
    let pki = Pki::new();
    let r = reloader(&pki, |_| {}).expect("valid");
    let next = pki.ca.server("rotated");
    replace_by_rename(&pki.server_cert, &next.cert_pem);
    assert!(r.reload(ReloadReason::Watch).is_err());
    assert!(r.reload(ReloadReason::Poll).is_err(), "the failed set is not remembered as loaded");
    replace_by_rename(&pki.server_key, &next.key_pem);
    assert!(matches!(r.reload(ReloadReason::Watch), Ok(ReloadOutcome::Reloaded { .. })));
}

fn expired(pki: &Pki) -> Leaf {
    pki.ca.issue(false, |p| {
        p.distinguished_name.push(DnType::CommonName, "expired");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })
}

#[test]
fn expired_certificate_is_loaded_on_reload_by_default() {
    let pki = Pki::new();
    let r = reloader(&pki, |_| {}).expect("valid");
    let old = expired(&pki);
    old.write(pki.dir.path(), "server");
    let ReloadOutcome::Reloaded { leaf, .. } = r.reload(ReloadReason::Watch).expect("loaded") else {
        panic!("expected a reload")
    };
    assert_eq!(leaf.validity(), Validity::Expired);
}

#[test]
fn expired_certificate_is_refused_on_reload_when_refuse_expired_is_set() {
    let pki = Pki::new();
    let r = reloader(&pki, |c| c.listeners[0].tls.refuse_expired = true).expect("valid");
    expired(&pki).write(pki.dir.path(), "server");
    let err = r.reload(ReloadReason::Watch).expect_err("refused");
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
}

#[test]
fn not_yet_valid_certificate_is_refused_at_startup_when_refuse_expired_is_set() {
    let pki = Pki::new();
    pki.ca
        .issue(false, |p| {
            p.distinguished_name.push(DnType::CommonName, "future");
            p.not_before = rcgen::date_time_ymd(2098, 1, 1);
        })
        .write(pki.dir.path(), "server");
    let err = reloader(&pki, |c| c.listeners[0].tls.refuse_expired = true).err().expect("refused");
    assert!(matches!(err, TlsError::NotYetValid { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Under load

/// One established MQTT session echoing its own publishes through Mosquitto until `stop`.
async fn echo_session(
    port: u16,
    client: Arc<rustls::ClientConfig>,
    name: String,
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut tls = tls_connect(port, client).await.map_err(|e| format!("{name}: handshake: {e}"))?;
    let topic = format!("devices/{name}/echo");
    tls.write_all(&packet::connect(4, &name, None, None)).await.map_err(|e| e.to_string())?;
    let (h, body) = read_packet(&mut tls).await.map_err(|e| format!("{name}: connack: {e}"))?;
    if h != 0x20 || body != [0, 0] {
        return Err(format!("{name}: CONNACK {h:#x} {body:?}"));
    }
    tls.write_all(&packet::subscribe(4, 1, &topic, 0)).await.map_err(|e| e.to_string())?;
    let (h, _) = read_packet(&mut tls).await.map_err(|e| format!("{name}: suback: {e}"))?;
    if h != 0x90 {
        return Err(format!("{name}: expected SUBACK, got {h:#x}"));
    }
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("{name}-{n}");
        tls.write_all(&packet::publish_qos0(4, &topic, payload.as_bytes()))
            .await
            .map_err(|e| format!("{name}: publish {n}: {e}"))?;
        let (h, body) = read_packet(&mut tls).await.map_err(|e| format!("{name}: echo {n}: {e}"))?;
        if h & 0xf0 != 0x30 || !body.ends_with(payload.as_bytes()) {
            return Err(format!("{name}: echo {n} wrong: {h:#x}"));
        }
        n += 1;
        round_trips.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_rotations_under_load_drop_nothing_and_fail_no_handshake() {
    const SESSIONS: usize = 5;
    const ROTATIONS: usize = 20;
    let rig = Rig::start_with(Pki::new(), Some(Mosquitto::start()), |_, _| {}).await;
    let port = rig.proxy.port();
    let stop = Arc::new(AtomicBool::new(false));
    let round_trips = Arc::new(AtomicU64::new(0));

    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let name = format!("dev-{i}");
        let client = client_tls(&rig.pki, Some(&rig.pki.ca.client(&name)));
        sessions.push(tokio::spawn(echo_session(port, client, name, stop.clone(), round_trips.clone())));
    }
    let handshakes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (client, stop, handshakes, failures) =
            (rig.client.clone(), stop.clone(), handshakes.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match presented_cert(port, client.clone()).await {
                    Ok(_) => handshakes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().expect("lock").push(e.to_string());
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Fresh keys take a moment to generate; do it before the clock starts.
    let leaves: Vec<Leaf> = (0..ROTATIONS).map(|i| rig.pki.ca.server(&format!("rotation-{i}"))).collect();
    let before = round_trips.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    for next in &leaves {
        replace_by_rename(&rig.pki.server_key, &next.key_pem);
        replace_by_rename(&rig.pki.server_cert, &next.cert_pem);
        latencies.push(rig.wait_presented(next).await);
    }
    // Past the debounce, every new handshake presents the last certificate.
    tokio::time::sleep(watch_only().debounce * 2).await;
    let last = leaves.last().expect("rotations");
    for _ in 0..10 {
        assert!(rig.presented().await == last.der, "a handshake after the last rotation saw an older certificate");
    }
    let during = round_trips.load(Ordering::Relaxed) - before;

    stop.store(true, Ordering::Relaxed);
    for s in sessions {
        tokio::time::timeout(WAIT, s)
            .await
            .expect("session ends")
            .expect("session task")
            .expect("session kept working");
    }
    for l in loops {
        tokio::time::timeout(WAIT, l).await.expect("loop ends").expect("loop task");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    let max = latencies.iter().max().copied().unwrap_or_default();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    eprintln!(
        "{ROTATIONS} rotations: latency mean {mean:?} max {max:?}; {} handshakes, {during} echo round trips during rotation",
        handshakes.load(Ordering::Relaxed)
    );
    assert!(max < RELOAD_DEADLINE);
    assert!(during >= (SESSIONS * ROTATIONS) as u64, "sessions kept passing messages: {during}");
    assert!(handshakes.load(Ordering::Relaxed) >= ROTATIONS as u64, "handshakes ran throughout");
}

// ---------------------------------------------------------------------------------------------
// The binary

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_running_binary_instead_of_stopping_it() {
    let pki = Pki::new();
    // Only SIGHUP can load the new files within the deadline: no re-check, and a debounce far longer.
    let mut mqtls = Binary::start(
        &pki,
        &format!("127.0.0.1:{}", free_port()),
        &["--reload-interval", "off", "--reload-debounce", "30s"],
    );
    let port = mqtls.port;
    // "watching" is logged after the catch-up check, so from here on only SIGHUP loads a change in time.
    mqtls.wait_for_log("watching TLS files");
    let client = client_tls(&pki, Some(&pki.ca.client("device-1")));
    let next = pki.ca.server("rotated");
    replace_by_rename(&pki.server_key, &next.key_pem);
    replace_by_rename(&pki.server_cert, &next.cert_pem);
    let pid = mqtls.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    wait_presented(port, &client, &next.der, RELOAD_DEADLINE).await;
    assert!(mqtls.running(), "SIGHUP stopped mqtls: {}", mqtls.log());
    let text = mqtls.log();
    assert!(text.contains(r#""reason":"sighup""#), "{text}");
    assert!(text.contains(r#""subject":"CN=rotated""#), "the reload log names the new leaf: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificate_at_startup_is_served_with_a_warning_in_the_log() {
    let pki = Pki::new();
    let old = expired(&pki);
    old.write(pki.dir.path(), "server");
    let mqtls = Binary::start(&pki, &format!("127.0.0.1:{}", free_port()), &[]);
    let text = mqtls.log();
    let warning = text.lines().find(|l| l.contains("SERVER CERTIFICATE EXPIRED")).unwrap_or_else(|| panic!("{text}"));
    assert!(warning.contains(r#""level":"WARN""#), "{warning}");
    assert!(warning.contains("2021-01-01T00:00:00Z"), "the warning gives the date: {warning}");
}

#[test]
fn reloads_are_counted_and_the_expiry_metric_follows_the_new_certificate() {
    let pki = Pki::new();
    let mut config = pki.config(no_upstream());
    config.global.reload = watch_only();
    let metrics = std::sync::Arc::new(mqtls::ops::metrics::Metrics::new());
    let r = Reloader::new(config.listeners[0].tls.clone(), watch_only(), metrics.clone()).expect("valid");
    let next = pki.ca.issue(false, |p| {
        p.distinguished_name.push(DnType::CommonName, "rotated");
        p.serial_number = Some(SerialNumber::from(0x0a0bu64));
        p.not_after = rcgen::date_time_ymd(2031, 6, 1);
    });
    replace_by_rename(&pki.server_cert, &next.cert_pem);
    assert!(r.reload(ReloadReason::Watch).is_err(), "new certificate with the old key");
    replace_by_rename(&pki.server_key, &next.key_pem);
    r.reload(ReloadReason::Watch).expect("pair loads");

    let text = metrics.render();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition");
    let value = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} with {label:?} in\n{text}"))
    };
    assert_eq!(value("mqtls_tls_reloads_total", ("result", "error")), 1.0);
    assert_eq!(value("mqtls_tls_reloads_total", ("result", "ok")), 1.0);
    let not_after = rcgen::date_time_ymd(2031, 6, 1).unix_timestamp() as f64;
    assert_eq!(value("mqtls_certificate_not_after_timestamp_seconds", ("serial", "0A0B")), not_after);
}
