//! Established connections are held to trust changes, certificate expiry and `max_conn_lifetime`:
//! each test keeps real devices (`mosquitto_sub` with a will) connected through mqtls to a real
//! Mosquitto, changes what mqtls trusts, and watches who is closed (the broker delivers their will),
//! who stays (a message still reaches them), and who is refused on reconnect.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mqtls::reload::ReloadReason;
use rcgen::{DnType, SerialNumber};
use time::OffsetDateTime;

/// The window the tests' closes are spread over.
const SPREAD: Duration = Duration::from_secs(3);
/// Slack on top of a deadline, for a loaded CI machine.
const SLACK: Duration = Duration::from_secs(4);

fn device_leaf(ca: &Ca, cn: &str, serial: u64) -> Leaf {
    ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
    })
}

/// Waits for `n` wills; returns each device's name with the time since `from` its will arrived.
async fn wills(monitor: &mut Monitor, n: usize, from: Instant) -> Vec<(String, Duration)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let (topic, payload) = monitor.next().await;
        assert_eq!(payload, b"gone", "{topic}");
        let cn = topic.trim_start_matches("devices/").trim_end_matches("/will").to_string();
        got.push((cn, from.elapsed()));
    }
    got
}

/// mqtls checking a CRL file (revoking nothing yet) with `spread`, in front of a real broker, and a
/// monitor of the devices' wills.
struct CrlRig {
    pki: Pki,
    broker: Mosquitto,
    crl: std::path::PathBuf,
    proxy: Mqtls,
    reloader: std::sync::Arc<mqtls::reload::Reloader>,
    monitor: Monitor,
}

impl CrlRig {
    async fn start(spread: Duration) -> CrlRig {
        init_logs();
        let pki = Pki::new();
        let broker = Mosquitto::start();
        let crl = pki.path("devices.crl");
        std::fs::write(&crl, pki.ca.crl(&[])).expect("write crl");
        let mut config = pki.config(broker.upstream());
        config.listeners[0].tls.crls = vec![crl.clone()];
        config.listeners[0].recheck.spread = spread;
        let (proxy, reloader) = Mqtls::start_reloading(config).await;
        let monitor = Monitor::start(&broker, "devices/+/will").await;
        CrlRig { pki, broker, crl, proxy, reloader, monitor }
    }

    /// Writes a CRL revoking `serial` and reloads; returns when the change was published.
    fn revoke(&self, serial: u64) -> Instant {
        std::fs::write(&self.crl, self.pki.ca.crl(&[serial])).expect("write crl");
        let changed = Instant::now();
        self.reloader.reload(ReloadReason::Sighup).expect("reload");
        changed
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_revoked_by_a_new_crl_is_closed_within_the_spread_and_refused_on_reconnect() {
    let mut rig = CrlRig::start(SPREAD).await;
    let (pki, port) = (&rig.pki, rig.proxy.port());
    let stolen_leaf = device_leaf(&pki.ca, "stolen", 4242);
    let _stolen = Device::connect(pki, port, "stolen", &stolen_leaf).await;
    let mut good = Device::connect(pki, port, "good", &device_leaf(&pki.ca, "good", 7)).await;
    good.round_trip(&rig.broker, "before").await;

    let changed = rig.revoke(4242);
    let closed = wills(&mut rig.monitor, 1, changed).await;
    assert_eq!(closed[0].0, "stolen");
    assert!(closed[0].1 <= SPREAD + SLACK, "closed {:?} after the CRL change", closed[0].1);
    println!("CRL change to close: {:?} (spread {SPREAD:?})", closed[0].1);
    assert_eq!(rig.proxy.metric(r#"mqtls_connections_closed_total{reason="revoked"}"#), 1.0);

    assert!(!mqtt_accepted(port, client_tls(&rig.pki, Some(&stolen_leaf))).await, "the reconnect is refused");
    // Counted once the server side of the refused handshake has ended.
    let proxy = &rig.proxy;
    eventually("the refused reconnect is counted", || async {
        proxy.metric(r#"mqtls_tls_handshake_failures_total{reason="revoked"}"#) >= 1.0
    })
    .await;
    good.round_trip(&rig.broker, "after").await;
    rig.monitor.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_the_ca_bundle_closes_the_removed_cas_devices_over_the_spread_and_keeps_the_others() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let removed = Ca::new("compromised CA");
    let bundle = pki.path("clients.pem");
    std::fs::write(&bundle, format!("{}{}", pki.ca.pem, removed.pem)).expect("write bundle");
    let mut config = pki.config(broker.upstream());
    config.listeners[0].tls.client_ca = Some(bundle.clone());
    config.listeners[0].recheck.spread = SPREAD;
    let (proxy, reloader) = Mqtls::start_reloading(config).await;
    let mut monitor = Monitor::start(&broker, "devices/+/will").await;
    let mut kept = Device::connect(&pki, proxy.port(), "kept", &device_leaf(&pki.ca, "kept", 1)).await;
    let mut doomed = Vec::new();
    for i in 0..6 {
        let cn = format!("doomed-{i}");
        doomed.push(Device::connect(&pki, proxy.port(), &cn, &device_leaf(&removed, &cn, 100 + i)).await);
    }

    std::fs::write(&bundle, &pki.ca.pem).expect("write bundle");
    let changed = Instant::now();
    reloader.reload(ReloadReason::Sighup).expect("reload");
    let closed = wills(&mut monitor, 6, changed).await;
    let mut names: Vec<&str> = closed.iter().map(|(cn, _)| cn.as_str()).collect();
    names.sort();
    assert_eq!(names, ["doomed-0", "doomed-1", "doomed-2", "doomed-3", "doomed-4", "doomed-5"]);
    let (first, last) = (closed[0].1, closed[5].1);
    assert!(last <= SPREAD + SLACK, "last close {last:?} after the change");
    assert!(last - first >= Duration::from_millis(100), "closes spread, not at once: {closed:?}");
    println!("CA change to closes: {closed:?} (spread {SPREAD:?})");
    assert_eq!(proxy.metric(r#"mqtls_connections_closed_total{reason="untrusted"}"#), 6.0);
    kept.round_trip(&broker, "still here").await;
    monitor.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_spread_closes_at_once() {
    let mut rig = CrlRig::start(Duration::ZERO).await;
    let leaf = device_leaf(&rig.pki.ca, "stolen", 4242);
    let _stolen = Device::connect(&rig.pki, rig.proxy.port(), "stolen", &leaf).await;
    let changed = rig.revoke(4242);
    let closed = wills(&mut rig.monitor, 1, changed).await;
    assert!(closed[0].1 <= Duration::from_secs(2), "closed {:?} after the change", closed[0].1);
}

#[tokio::test(flavor = "multi_thread")]
async fn narrowing_the_allow_rules_on_sighup_closes_the_excluded_device_and_keeps_the_others() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let file = pki.path("mqtls.toml");
    std::fs::write(&file, "allow_cn = [\"dev-a\", \"dev-b\"]\nrecheck_spread = \"0\"\n").expect("write config");
    let proxy = Binary::start(&pki, &broker.upstream().to_string(), &["--config", &file.display().to_string()]);
    let mut monitor = Monitor::start(&broker, "devices/+/will").await;
    let mut a = Device::connect(&pki, proxy.port, "dev-a", &device_leaf(&pki.ca, "dev-a", 1)).await;
    let _b = Device::connect(&pki, proxy.port, "dev-b", &device_leaf(&pki.ca, "dev-b", 2)).await;

    std::fs::write(&file, "allow_cn = [\"dev-a\"]\nrecheck_spread = \"0\"\n").expect("write config");
    let (ok, _, err) = run_tool("kill", &["-HUP".into(), proxy.pid().to_string()]).await;
    assert!(ok, "kill -HUP: {err}");
    let closed = wills(&mut monitor, 1, Instant::now()).await;
    assert_eq!(closed[0].0, "dev-b");
    proxy.wait_for_log("not_allowed");
    a.round_trip(&broker, "still allowed").await;
    monitor.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_expiring_while_connected_closes_its_connection() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = Mqtls::start(pki.config(broker.upstream())).await;
    let mut monitor = Monitor::start(&broker, "devices/+/will").await;
    let lifetime = Duration::from_secs(4);
    let short = pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "short");
        p.not_after = OffsetDateTime::now_utc() + lifetime;
    });
    let issued = Instant::now();
    let _short = Device::connect(&pki, proxy.port(), "short", &short).await;
    let mut long = Device::connect(&pki, proxy.port(), "long", &device_leaf(&pki.ca, "long", 9)).await;
    let closed = wills(&mut monitor, 1, issued).await;
    assert_eq!(closed[0].0, "short");
    assert!(closed[0].1 >= lifetime - Duration::from_secs(1), "closed {:?} after issue, before expiry", closed[0].1);
    assert!(closed[0].1 <= lifetime + SLACK, "closed {:?} after issue", closed[0].1);
    assert_eq!(proxy.metric(r#"mqtls_connections_closed_total{reason="expired"}"#), 1.0);
    assert!(!mqtt_accepted(proxy.port(), client_tls(&pki, Some(&short))).await, "an expired certificate is refused");
    long.round_trip(&broker, "still valid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_conn_lifetime_closes_a_connection_and_the_device_comes_back() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    config.listeners[0].recheck.max_lifetime = Some(Duration::from_secs(2));
    let proxy = Mqtls::start(config).await;
    let mut monitor = Monitor::start(&broker, "devices/+/will").await;
    let connected = Instant::now();
    let mut device = Device::connect(&pki, proxy.port(), "dev", &device_leaf(&pki.ca, "dev", 3)).await;
    let closed = wills(&mut monitor, 1, connected).await;
    assert!(closed[0].1 >= Duration::from_millis(1800), "closed after {:?}", closed[0].1);
    assert_eq!(proxy.metric(r#"mqtls_connections_closed_total{reason="lifetime"}"#), 1.0);
    device.expect_line("SUBACK").await;
    device.round_trip(&broker, "back again").await;
}
