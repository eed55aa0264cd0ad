//! CRLs fetched over HTTP (`crl_urls`): fetched at start, refetched every `crl_refresh`, and every
//! bad answer keeps the last good CRL. Each test runs its own HTTP server on loopback, serving what
//! the test says, a real Mosquitto, and mqtls in-process.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mqtls::crl::{CrlSettings, CrlStale};
use rcgen::{DnType, SerialNumber};
use rustls::HandshakeKind;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The serial of the device every test revokes.
const STOLEN: u64 = 4242;

/// What the test CRL server answers.
#[derive(Clone)]
enum Answer {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status, empty body.
    Status(u16),
    /// Accepts, reads the request and never answers.
    Hang,
}

/// An HTTP server on 127.0.0.1 answering every request with the current [`Answer`]; stopped when
/// dropped.
struct CrlServer {
    url: String,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CrlServer {
    async fn start(answer: Answer) -> CrlServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/device-ca.crl", listener.local_addr().expect("addr"));
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (answer.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let connections = tokio_util::task::TaskTracker::new();
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else { break };
                let answer = a.lock().expect("lock").clone();
                r.fetch_add(1, Ordering::SeqCst);
                connections.spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    // Until the end of the headers; bounded by the request size and the read timeout.
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let (status, body) = match answer {
                        Answer::Body(body) => ("200 OK".to_string(), body),
                        Answer::Status(code) => (format!("{code} Error"), Vec::new()),
                        Answer::Hang => {
                            tokio::time::sleep(WAIT).await;
                            return;
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/pkix-crl\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(&body).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        CrlServer { url, answer, requests, task }
    }

    fn serve(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for CrlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A DER CRL of `ca` revoking `revoked`, issued `age` ago, with nextUpdate `valid` after now.
fn crl(ca: &Ca, number: u64, age: Duration, valid: Duration, revoked: &[u64]) -> Vec<u8> {
    let now = OffsetDateTime::now_utc();
    ca.crl_der(number, now - age, now + valid, revoked)
}

const HOUR: Duration = Duration::from_secs(3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// mqtls (with admin endpoints) fetching `server`'s CRL, a real broker, a stolen and a good device.
struct Setup {
    pki: Pki,
    _broker: Mosquitto,
    proxy: Mqtls,
    stolen: Arc<rustls::ClientConfig>,
    good: Arc<rustls::ClientConfig>,
    good_leaf: Leaf,
}

async fn setup_with_pki(pki: Pki, server: &CrlServer, edit: impl FnOnce(&mut CrlSettings)) -> Setup {
    init_logs();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    let crl = &mut config.listeners[0].tls.crl_fetch;
    crl.urls = vec![server.url.clone()];
    edit(crl);
    let proxy = Mqtls::start_with_admin(config).await;
    let stolen = pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "stolen-device");
        p.serial_number = Some(SerialNumber::from(STOLEN));
    });
    let good_leaf = pki.ca.client("good-device");
    let (stolen, good) = (client_tls(&pki, Some(&stolen)), client_tls(&pki, Some(&good_leaf)));
    Setup { pki, _broker: broker, proxy, stolen, good, good_leaf }
}

impl Setup {
    fn metrics(&self) -> String {
        self.proxy.metrics_text()
    }

    /// The sum of the samples `query` selects (see [`sample`]).
    fn metric(&self, query: &str) -> f64 {
        self.proxy.metric(query)
    }

    async fn wait_metric(&self, name_and_labels: &str, at_least: f64) {
        eventually(&format!("{name_and_labels} >= {at_least}"), || async { self.metric(name_and_labels) >= at_least })
            .await;
    }

    async fn stolen_accepted(&self) -> bool {
        mqtt_accepted(self.proxy.port(), self.stolen.clone()).await
    }

    async fn good_accepted(&self) -> bool {
        mqtt_accepted(self.proxy.port(), self.good.clone()).await
    }

    /// The good device without a session to resume: a full handshake.
    async fn good_accepted_in_a_full_handshake(&self) -> bool {
        mqtt_accepted(self.proxy.port(), client_tls(&self.pki, Some(&self.good_leaf))).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_served_over_http_is_fetched_at_start_and_revokes_its_devices() {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 1, HOUR, YEAR, &[STOLEN]))).await;
    let s = setup_with_pki(pki, &server, |_| {}).await;
    assert_eq!(server.requests(), 1, "fetched once, before the listener served");

    assert!(!s.stolen_accepted().await, "revoked by the fetched CRL");
    assert!(s.good_accepted().await, "other devices still connect");
    s.wait_metric(r#"mqtls_tls_handshake_failures_total{reason="revoked"}"#, 1.0).await;
    assert_eq!(s.metric(r#"mqtls_tls_handshake_failures_total{reason="revoked"}"#), 1.0, "{}", s.metrics());

    let metrics = s.metrics();
    assert!(metrics.contains(r#"mqtls_crl_fetches_total{result="ok"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"mqtls_crl_next_update_timestamp_seconds{issuer="CN=mqtls test CA"}"#), "{metrics}");
    assert!(metrics.contains(&format!(r#"mqtls_crl_last_success_timestamp_seconds{{url="{}"}}"#, server.url)));

    let (status, body) = http_get(s.proxy.admin.expect("admin"), "/certs").await;
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&body).expect("json");
    let crls = certs["crls"].as_array().expect("a crls list");
    assert_eq!(crls.len(), 1, "{body}");
    assert_eq!(crls[0]["source"], server.url.as_str());
    assert_eq!(crls[0]["issuer"], "CN=mqtls test CA");
    assert_eq!(crls[0]["entries"], 1);
    assert!(crls[0]["next_update"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    assert!(crls[0]["this_update"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_updated_crl_is_picked_up_after_crl_refresh_and_resumption_cannot_bring_the_device_back() {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 1, HOUR, YEAR, &[]))).await;
    let s = setup_with_pki(pki, &server, |c| c.refresh = Duration::from_millis(300)).await;
    // The device holds a session from before the revocation.
    assert_eq!(mqtt_session(s.proxy.port(), s.stolen.clone()).await.expect("first"), HandshakeKind::Full);
    assert_eq!(mqtt_session(s.proxy.port(), s.stolen.clone()).await.expect("resumes"), HandshakeKind::Resumed);

    server.serve(Answer::Body(crl(&s.pki.ca, 2, Duration::ZERO, YEAR, &[STOLEN])));
    // A device without a session shows when the new CRL is in force.
    let stolen_again = client_tls(
        &s.pki,
        Some(&s.pki.ca.issue(true, |p| {
            p.distinguished_name.push(DnType::CommonName, "stolen-device");
            p.serial_number = Some(SerialNumber::from(STOLEN));
        })),
    );
    wait_accepted(s.proxy.port(), &stolen_again, false, Duration::from_secs(5)).await;
    assert!(
        mqtt_session(s.proxy.port(), s.stolen.clone()).await.is_err(),
        "no resumption, and the full handshake fails"
    );
    assert!(s.good_accepted().await, "other devices still connect");
}

/// After start with a CRL revoking STOLEN, the server switches to `fault`: the fetch is counted as
/// `result`, and the last good CRL stays in force.
async fn fault_keeps_the_last_good_crl(
    fault: impl FnOnce(&Pki) -> Answer,
    result: &str,
    edit: impl FnOnce(&mut CrlSettings),
) {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 2, Duration::from_secs(60), YEAR, &[STOLEN]))).await;
    let s = setup_with_pki(pki, &server, |c| {
        c.refresh = Duration::from_millis(300);
        edit(c);
    })
    .await;
    assert!(!s.stolen_accepted().await, "revoked by the CRL fetched at start");
    server.serve(fault(&s.pki));
    s.wait_metric(&format!(r#"mqtls_crl_fetches_total{{result="{result}"}}"#), 2.0).await;
    assert!(!s.stolen_accepted().await, "still revoked: the last good CRL is kept");
    assert!(s.good_accepted().await, "other devices still connect");
    assert_eq!(s.metric(r#"mqtls_crl_fetches_total{result="ok"}"#), 1.0, "{}", s.metrics());
    let (_, body) = http_get(s.proxy.admin.expect("admin"), "/certs").await;
    assert!(body.contains(&server.url), "the last good CRL still listed: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(|_| Answer::Status(404), "http_error", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_times_out_and_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(|_| Answer::Hang, "timeout", |c| c.fetch_timeout = Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_body_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(|_| Answer::Body(b"<html>maintenance</html>".to_vec()), "unparsable", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_signed_by_another_ca_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(
        |_| Answer::Body(crl(&Ca::new("some other CA"), 3, Duration::ZERO, YEAR, &[])),
        "unknown_issuer",
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_with_the_ca_name_but_another_key_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(
        |_| Answer::Body(crl(&Ca::new("mqtls test CA"), 3, Duration::ZERO, YEAR, &[])),
        "bad_signature",
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_crl_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(|pki| Answer::Body(crl(&pki.ca, 1, HOUR, YEAR, &[])), "older", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_keeps_the_last_good_crl() {
    fault_keeps_the_last_good_crl(
        |pki| Answer::Body(crl(&pki.ca, 3, Duration::ZERO, YEAR, &(1..=200).collect::<Vec<u64>>())),
        "too_large",
        |c| c.max_size = 2000,
    )
    .await;
}

/// A CRL whose nextUpdate is `NEXT_UPDATE` away, then a server that fails.
const NEXT_UPDATE: Duration = Duration::from_secs(3);

async fn stale(policy: CrlStale) -> Setup {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 1, HOUR, NEXT_UPDATE, &[STOLEN]))).await;
    let s = setup_with_pki(pki, &server, |c| {
        c.refresh = Duration::from_millis(300);
        c.stale = policy;
    })
    .await;
    assert!(s.good_accepted().await, "the CRL is fresh");
    server.serve(Answer::Status(503));
    tokio::time::sleep(NEXT_UPDATE + Duration::from_secs(2)).await;
    assert!(s.metric(r#"mqtls_crl_fetches_total{result="http_error"}"#) >= 1.0, "{}", s.metrics());
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn crl_stale_refuse_refuses_new_handshakes_past_next_update() {
    let s = stale(CrlStale::Refuse).await;
    assert!(!s.good_accepted_in_a_full_handshake().await, "the CRL is past its nextUpdate");
    s.wait_metric(r#"mqtls_tls_handshake_failures_total{reason="crl_expired"}"#, 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crl_stale_keep_still_admits_the_good_device_past_next_update() {
    let s = stale(CrlStale::Keep).await;
    assert!(s.good_accepted_in_a_full_handshake().await, "the stale CRL is kept");
    assert!(!s.stolen_accepted().await, "and still revokes");
}

fn mqtls_binary(pki: &Pki, extra: &[&str]) -> std::process::Output {
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let mut args = vec!["--cert".to_string(), path(&pki.server_cert), "--key".into(), path(&pki.server_key)];
    args.extend(["--client-ca".into(), path(&pki.ca_file), "--listen".into(), "127.0.0.1:0".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_mqtls"));
    command.args(&args).env_remove("MQTLS_CONFIG").env_remove("RUST_LOG");
    let mut child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run");
    let started = std::time::Instant::now();
    // Bounded: a valid configuration would serve forever; kill it after WAIT.
    while child.try_wait().expect("wait").is_none() && started.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

#[test]
fn an_https_crl_url_stops_start_up_naming_the_setting() {
    let pki = Pki::new();
    let out = mqtls_binary(&pki, &["--crl-url", "https://ca.example/device.crl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("crl_urls") && stderr.contains("only http://"), "{stderr}");
}

#[test]
fn a_garbage_crl_url_stops_start_up_naming_the_setting() {
    let pki = Pki::new();
    let out = mqtls_binary(&pki, &["--crl-url", "not a url"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("crl_urls"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fetches_each_crl_and_prints_it_or_why_it_failed() {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 1, HOUR, YEAR, &[1, 2]))).await;
    let missing = CrlServer::start(Answer::Status(404)).await;
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let args = [
        "check".to_string(),
        "--cert".into(),
        path(&pki.server_cert),
        "--key".into(),
        path(&pki.server_key),
        "--client-ca".into(),
        path(&pki.ca_file),
        "--crl-url".into(),
        server.url.clone(),
        "--crl-url".into(),
        missing.url.clone(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mqtls")).args(&args).env_remove("MQTLS_CONFIG").output().expect("run")
    })
    .await
    .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with(&format!("# crl: {} ", server.url))).expect("a crl line");
    assert!(line.contains("issuer=CN=mqtls test CA") && line.contains("entries=2"), "{line}");
    assert!(line.contains("next_update="), "{line}");
    let failed = format!("# crl: {} FAILED: the server answered HTTP 404", missing.url);
    assert!(stdout.lines().any(|l| l == failed), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificates_distribution_point_is_fetched_once_seen_and_then_revokes_it() {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 1, HOUR, YEAR, &[STOLEN]))).await;
    let s = setup_with_pki(pki, &server, |c| {
        c.urls.clear();
        c.from_distribution_points = true;
    })
    .await;
    assert_eq!(server.requests(), 0, "nothing to fetch before a certificate names its distribution point");
    let named = s.pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "stolen-device");
        p.serial_number = Some(SerialNumber::from(STOLEN));
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec![server.url.clone()] }];
    });
    let named = client_tls(&s.pki, Some(&named));
    assert!(mqtt_accepted(s.proxy.port(), named.clone()).await, "admitted before its CRL is held");
    wait_accepted(s.proxy.port(), &named, false, Duration::from_secs(5)).await;
    assert!(server.requests() >= 1);
    assert!(s.good_accepted_in_a_full_handshake().await, "other devices still connect");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connected_device_revoked_by_a_fetched_crl_is_closed_and_its_will_delivered() {
    let pki = Pki::new();
    let server = CrlServer::start(Answer::Body(crl(&pki.ca, 1, HOUR, YEAR, &[]))).await;
    init_logs();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    config.listeners[0].tls.crl_fetch.urls = vec![server.url.clone()];
    config.listeners[0].tls.crl_fetch.refresh = Duration::from_millis(300);
    config.listeners[0].recheck.spread = Duration::from_secs(2);
    let proxy = Mqtls::start(config).await;
    let mut monitor = Monitor::start(&broker, "devices/+/will").await;
    let stolen_leaf = pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "stolen");
        p.serial_number = Some(SerialNumber::from(STOLEN));
    });
    let _stolen = Device::connect(&pki, proxy.port(), "stolen", &stolen_leaf).await;
    let mut good = Device::connect(&pki, proxy.port(), "good", &pki.ca.client("good")).await;

    server.serve(Answer::Body(crl(&pki.ca, 2, Duration::ZERO, YEAR, &[STOLEN])));
    let served = std::time::Instant::now();
    let (topic, payload) = monitor.next().await;
    assert_eq!((topic.as_str(), payload.as_slice()), ("devices/stolen/will", &b"gone"[..]));
    println!("fetched CRL served to close: {:?} (refresh 300ms, spread 2s)", served.elapsed());
    assert!(!mqtt_accepted(proxy.port(), client_tls(&pki, Some(&stolen_leaf))).await, "the reconnect is refused");
    good.round_trip(&broker, "still here").await;
    assert_eq!(proxy.metric(r#"mqtls_connections_closed_total{reason="revoked"}"#), 1.0, "{}", proxy.metrics_text());
}
