//! Operating mqtls: metrics scraped with a real Prometheus text parser, health and readiness, `/certs`,
//! the connection limit and the drain.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rcgen::DnType;
use tokio::io::AsyncWriteExt;

/// Scrapes `/metrics` and returns every sample as "name{label=value,...}" → value (labels sorted).
async fn scrape(proxy: &Mqtls) -> HashMap<String, f64> {
    let (status, body) = http_get(proxy.admin.expect("admin"), "/metrics").await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text exposition");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            // One listener here: its `listener` and `transport` labels are left out of the keys.
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| !["listener", "transport"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        panic!("no sample {key}; have {keys:#?}")
    })
}

/// A client that completes TLS and CONNECT, gets CONNACK 0, then disconnects cleanly.
async fn good_session(s: &Mqtls, pki: &Pki, leaf: &Leaf) {
    let mut tls = tls_connect(s.port(), client_tls(pki, Some(leaf))).await.expect("tls");
    tls.write_all(&packet::connect(4, "good", None, None)).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    tls.write_all(&packet::DISCONNECT).await.expect("disconnect");
    read_to_close(&mut tls).await;
}

/// A client whose handshake fails.
async fn failed_handshake(s: &Mqtls, pki: &Pki, leaf: Option<&Leaf>) {
    let result = async {
        let mut tls = tls_connect(s.port(), client_tls(pki, leaf)).await?;
        tls.write_all(&packet::connect(4, "c", None, None)).await?;
        read_exact_within(&mut tls, 4).await
    }
    .await;
    assert!(result.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_known_sequence_of_connections_exactly() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = Mqtls::start_with_admin(pki.config(broker.upstream())).await;
    let device = pki.ca.client("device-42");

    good_session(&proxy, &pki, &device).await;
    good_session(&proxy, &pki, &device).await;
    failed_handshake(&proxy, &pki, None).await;
    failed_handshake(&proxy, &pki, Some(&Ca::new("rogue").client("device-42"))).await;
    let expired = pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "old");
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    failed_handshake(&proxy, &pki, Some(&expired)).await;
    // A PUBLISH where the CONNECT should be.
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    tls.write_all(&packet::publish_qos0(4, "t", b"x")).await.expect("write");
    read_to_close(&mut tls).await;

    // Outcomes are counted when connections end; wait (bounded) until all six have.
    let mut m = HashMap::new();
    for _ in 0..250 {
        m = scrape(&proxy).await;
        if m.get("mqtls_active_connections{}") == Some(&0.0)
            && m.get("mqtls_connections_total{outcome=ok}") == Some(&2.0)
            && m.get("mqtls_connections_total{outcome=tls_failed}") == Some(&3.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&m, "mqtls_active_connections{}"), 0.0);
    assert_eq!(get(&m, "mqtls_connections_total{outcome=ok}"), 2.0);
    assert_eq!(get(&m, "mqtls_connections_total{outcome=tls_failed}"), 3.0);
    assert_eq!(get(&m, "mqtls_connections_total{outcome=connect_refused}"), 1.0);
    assert_eq!(get(&m, "mqtls_tls_handshake_failures_total{reason=no_client_cert}"), 1.0);
    assert_eq!(get(&m, "mqtls_tls_handshake_failures_total{reason=unknown_ca}"), 1.0);
    assert_eq!(get(&m, "mqtls_tls_handshake_failures_total{reason=expired}"), 1.0);
    assert_eq!(get(&m, "mqtls_connect_refusals_total{reason=not_connect}"), 1.0);
    // What reached the broker: the edited CONNECT (username added) and the DISCONNECT, twice.
    let forwarded = packet::connect(4, "good", Some("device-42"), None).len() as f64 + 2.0;
    let up = get(&m, "mqtls_bytes_total{direction=client_to_upstream}");
    assert_eq!(up, 2.0 * forwarded, "two edited CONNECTs and two DISCONNECTs went up");
    assert_eq!(get(&m, "mqtls_bytes_total{direction=upstream_to_client}"), 8.0, "two CONNACKs came down");
    assert_eq!(get(&m, "mqtls_build_info{version=0.1.0}"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_expiry_metric_equals_the_certificate_not_after() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = Mqtls::start_with_admin(pki.config(broker.upstream())).await;
    let m = scrape(&proxy).await;
    let (_, server) = x509_parser::parse_x509_certificate(&pki.server.der).expect("server cert");
    let serial: String = server.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
    let key = format!("mqtls_certificate_not_after_timestamp_seconds{{index=0,role=server,serial={serial}}}");
    assert_eq!(get(&m, &key), server.validity().not_after.timestamp() as f64);
    let ca_der = pki.ca_cert_der();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca cert");
    let ca_serial: String = ca.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
    let key = format!("mqtls_certificate_not_after_timestamp_seconds{{index=0,role=client_ca,serial={ca_serial}}}");
    assert_eq!(get(&m, &key), ca.validity().not_after.timestamp() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn certs_endpoint_describes_the_server_chain_and_client_ca() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let proxy = Mqtls::start_with_admin(pki.config(broker.upstream())).await;
    let (status, body) = http_get(proxy.admin.expect("admin"), "/certs").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["server_chain"][0]["subject"], "CN=localhost");
    assert_eq!(v["server_chain"][0]["issuer"], "CN=mqtls test CA");
    assert_eq!(v["client_ca"][0]["subject"], "CN=mqtls test CA");
    for field in ["serial", "not_before", "not_after", "sha256"] {
        assert!(!v["server_chain"][0][field].is_null(), "{field} missing: {body}");
    }
    assert!(v["loaded_at"].as_str().is_some_and(|s| s.ends_with('Z')), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_upstream_going_down_and_up() {
    let pki = Pki::new();
    let mut broker = Mosquitto::start();
    let proxy = Mqtls::start_with_admin(pki.config(broker.upstream())).await;
    let admin = proxy.admin.expect("admin");
    eventually("ready with the broker up", || async { http_get(admin, "/readyz").await.0 == 200 }).await;
    broker.stop();
    eventually("not ready with the broker down", || async { http_get(admin, "/readyz").await.0 == 503 }).await;
    assert_eq!(http_get(admin, "/healthz").await.0, 200, "alive all the same");
    broker.restart();
    eventually("ready again", || async { http_get(admin, "/readyz").await.0 == 200 }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_turns_readiness_off_and_lets_a_live_session_finish() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    // Far longer than the test: the drain must end because the session did, not at the deadline.
    config.global.drain_timeout = Duration::from_secs(30);
    let mut proxy = Mqtls::start_with_admin(config).await;
    let admin = proxy.admin.expect("admin");
    eventually("ready", || async { http_get(admin, "/readyz").await.0 == 200 }).await;

    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    let mut burst = packet::connect(4, "live", None, None);
    burst.extend(packet::subscribe(4, 1, "devices/device-42/d", 0));
    tls.write_all(&burst).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(read_exact_within(&mut tls, 5).await.expect("suback"), [0x90, 3, 0, 1, 0]);

    proxy.begin_shutdown();
    eventually("not ready from the first moment of the drain", || async { http_get(admin, "/readyz").await.0 == 503 })
        .await;
    eventually("the listener stops accepting", || async { tokio::net::TcpStream::connect(proxy.addr).await.is_err() })
        .await;

    // The established session keeps exchanging messages during the drain.
    for i in 0..3u8 {
        let publish = packet::publish_qos0(4, "devices/device-42/d", &[i]);
        tls.write_all(&publish).await.expect("publish during drain");
        assert_eq!(read_exact_within(&mut tls, publish.len()).await.expect("echo during drain"), publish);
        tls.write_all(&packet::PINGREQ).await.expect("ping");
        assert_eq!(read_exact_within(&mut tls, 2).await.expect("pingresp"), [0xD0, 0]);
    }
    tls.write_all(&packet::DISCONNECT).await.expect("disconnect");
    let started = std::time::Instant::now();
    proxy.wait_stopped(WAIT).await;
    assert!(started.elapsed() < Duration::from_secs(15), "the drain ends when the last session does");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_limit_are_closed_at_once_and_counted() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    config.global.limits.max_connections = 1;
    let proxy = Mqtls::start_with_admin(config).await;
    let device = pki.ca.client("device-42");
    let mut first = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    first.write_all(&packet::connect(4, "first", None, None)).await.expect("write");
    assert_eq!(read_exact_within(&mut first, 4).await.expect("connack"), [0x20, 2, 0, 0]);

    let second = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await;
    assert!(second.is_err(), "the second connection is closed before TLS");
    let m = scrape(&proxy).await;
    assert_eq!(get(&m, "mqtls_connections_total{outcome=limit}"), 1.0);
    assert_eq!(get(&m, "mqtls_active_connections{}"), 1.0);

    // The first keeps working.
    first.write_all(&packet::PINGREQ).await.expect("ping");
    assert_eq!(read_exact_within(&mut first, 2).await.expect("pingresp"), [0xD0, 0]);
}
