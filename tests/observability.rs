//! The dashboard and the alerts operators import, checked against the tools and the program:
//! - examples/prometheus/mqtls-alerts.yaml: `promtool check rules`, and `promtool test rules` with
//!   mqtls-alerts.test.yaml (every alert fires, and stays quiet on the other side of its threshold);
//! - examples/grafana/mqtls.json: valid JSON, the two variables, a datasource and a query in every panel,
//!   every query valid PromQL (`promtool check rules` on them as recording rules);
//! - both: every metric they name is one a running mqtls exports, read from its `/metrics`, and every
//!   label they filter a metric on is one its samples carry;
//! - every alert is unit-tested and its runbook_url points at its section of docs/operations.md.
//!
//! promtool is in Debian's `prometheus` package (tests/run installs it); a missing promtool fails the test
//! with that name. examples/kubernetes/monitoring/ is validated with the other manifests (examples.rs).

mod common;
#[path = "support/examples.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqtls::config::{Config, ListenerProtocol};
use mqtls::conn::upstream::Upstream;
use mqtls::reload::{ReloadReason, Reloader};
use rcgen::{DnType, SerialNumber};
use support::{read, repo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RULES: &str = "examples/prometheus/mqtls-alerts.yaml";
const RULE_TESTS: &str = "examples/prometheus/mqtls-alerts.test.yaml";
const DASHBOARD: &str = "examples/grafana/mqtls.json";
const OPERATIONS: &str = "docs/operations.md";
/// Labels Prometheus adds to every series it scrapes (the unit tests' synthetic series carry them).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

async fn promtool(args: &[&str]) -> (bool, String) {
    let program = require_tool("promtool", "prometheus");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (ok, out, err) = run_tool(program.to_str().expect("utf-8 path"), &args).await;
    (ok, format!("{out}{err}"))
}

#[tokio::test]
async fn the_alert_rules_pass_promtool_check() {
    let (ok, out) = promtool(&["check", "rules", repo(RULES).to_str().expect("path")]).await;
    assert!(ok, "promtool check rules {RULES}:\n{out}");
}

#[tokio::test]
async fn each_alert_fires_and_stays_quiet_as_its_unit_tests_expect() {
    let (ok, out) = promtool(&["test", "rules", repo(RULE_TESTS).to_str().expect("path")]).await;
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");
}

/// The dashboard as JSON.
fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel of the dashboard (rows' nested panels included), rows themselves left out.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = vec![];
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// (panel title, refId, expr) of every query of the dashboard.
fn queries(d: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_string();
            out.push((title, t["refId"].as_str().unwrap_or("").to_string(), t["expr"].as_str().unwrap_or("").into()));
        }
    }
    out
}

#[test]
fn every_dashboard_panel_has_the_datasource_variable_and_a_query() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "schemaVersion of a current Grafana");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    let ds = var("datasource");
    assert_eq!((&ds["type"], &ds["query"]), (&"datasource".into(), &"prometheus".into()), "{ds}");
    let listener = var("listener");
    assert_eq!(listener["type"], "query");
    assert_eq!(listener["definition"], "label_values(mqtls_connections_total, listener)");
    assert_eq!(listener["datasource"]["uid"], "${datasource}");

    let all = panels(&d);
    assert!(all.len() >= 20, "the dashboard's panels were not all found: {}", all.len());
    let mut ids = BTreeSet::new();
    for p in all {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id of {title:?} is not unique");
        let w = p["gridPos"]["w"].as_u64().expect("gridPos.w");
        assert!(p["gridPos"]["x"].as_u64().expect("gridPos.x") + w <= 24, "{title:?} is wider than the grid");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title:?}: datasource");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title:?}: datasource");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title:?} has no query"));
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title:?}: a query without expr");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title:?}: refIds must differ");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title:?}: query datasource");
        }
    }
}

#[tokio::test]
async fn every_dashboard_query_is_valid_promql() {
    // As recording rules, promtool parses each expression; Grafana's variables replaced as it would.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, refid, expr)) in queries(&dashboard()).into_iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$listener", ".*");
        rules.push_str(&format!(
            "      # {title} {refid}\n      - record: dashboard:query_{i}\n        expr: {expr:?}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yaml");
    write_file(&file, &rules);
    let (ok, out) = promtool(&["check", "rules", file.to_str().expect("path")]).await;
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}\n{rules}");
}

/// Every `mqtls_*` metric name written in `text`.
fn names_used(text: &str) -> BTreeSet<String> {
    tokens(text).into_iter().map(|(name, _)| name).collect()
}

/// Every `mqtls_*` name in `text`, each with the label names of the `{...}` matchers right after it.
fn tokens(text: &str) -> Vec<(String, Vec<String>)> {
    // mqtls' metric names are lower case; a colon would make a recording rule's name.
    let in_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut out = vec![];
    let mut rest = text;
    while let Some(at) = rest.find("mqtls_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !in_name(c)).unwrap_or(tail.len());
        rest = &tail[len..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut labels = vec![];
        if let Some(body) = rest.strip_prefix('{').and_then(|b| b.split_once('}')).map(|(b, _)| b) {
            for matcher in split_outside_quotes(body) {
                let label = matcher.split(['=', '!', '~']).next().unwrap_or("").trim();
                if !label.is_empty() {
                    labels.push(label.to_string());
                }
            }
        }
        out.push((tail[..len].to_string(), labels));
    }
    out
}

/// `a="x,y",b!~"z"` → [`a="x,y"`, `b!~"z"`].
fn split_outside_quotes(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (vec![], 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// What a scrape of `exposition` (OpenMetrics text) gives PromQL: every series name, each with the label
/// names its samples carry. A family's series are named by its `# TYPE` (a counter `x` is `x_total`, a
/// histogram `x_bucket`, `x_sum` and `x_count`, an info `x_info`), so a query of a family's bare name is
/// caught as well.
fn exported(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let (family, kind) = decl.split_once(' ').expect("# TYPE name type");
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                out.entry(format!("{family}{s}")).or_default();
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = out.entry(line[..name_end].to_string()).or_default();
            if let Some((body, _)) = line[name_end..].strip_prefix('{').and_then(|b| b.rsplit_once('}')) {
                for pair in split_outside_quotes(body) {
                    if let Some((label, _)) = pair.split_once('=') {
                        labels.insert(label.trim().to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn metric_names_are_read_from_the_exposition_as_prometheus_stores_them() {
    let text = "# HELP mqtls_connections x\n# TYPE mqtls_connections counter\n\
                mqtls_connections_total{outcome=\"ok\",listener=\"a,b\"} 1\n\
                # TYPE mqtls_d_seconds histogram\n# TYPE mqtls_build info\n# TYPE mqtls_max gauge\n# EOF\n";
    let got = exported(text);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "mqtls_build_info",
            "mqtls_connections_total",
            "mqtls_d_seconds_bucket",
            "mqtls_d_seconds_count",
            "mqtls_d_seconds_sum",
            "mqtls_max"
        ]
    );
    assert_eq!(got["mqtls_connections_total"], BTreeSet::from(["listener".to_string(), "outcome".to_string()]));
    assert_eq!(
        tokens(r#"sum(rate(mqtls_x_bucket{le!="+Inf",a=~"b,c"}[5m])) / mqtls_y: + xmqtls_z mqtls_w{} a:mqtls_v"#),
        [
            ("mqtls_x_bucket".to_string(), vec!["le".to_string(), "a".to_string()]),
            ("mqtls_y".to_string(), vec![]),
            ("mqtls_w".to_string(), vec![])
        ]
    );
}

/// Serves one DER CRL over HTTP to every request, for `crl_urls`; stopped when dropped.
struct CrlHttp {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl CrlHttp {
    async fn start(der: Vec<u8>) -> CrlHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/ca.crl", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let der = der.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    // Until the end of the headers; bounded by size and by the read timeout.
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", der.len());
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(&der).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        CrlHttp { url, task }
    }
}

impl Drop for CrlHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// mqtls with its admin endpoints on, as `edit` configures it.
async fn with_admin(pki: &Pki, upstream: Upstream, edit: impl FnOnce(&mut Config)) -> (Mqtls, Arc<Reloader>) {
    let mut config = pki.config(upstream);
    config.global.admin = Some("127.0.0.1:0".parse().expect("addr"));
    edit(&mut config);
    Mqtls::start_reloading(config).await
}

/// Waits until `/metrics` of `proxy` has a sample of `name`; returns the exposition.
async fn scrape_with(proxy: &Mqtls, name: &str) -> String {
    let admin = proxy.admin.expect("admin endpoints");
    eventually(&format!("a sample of {name}"), || async {
        http_get(admin, "/metrics").await.1.lines().any(|l| l.starts_with(name) && !l.starts_with('#'))
    })
    .await;
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// TLS with `leaf`'s certificate to `port`, `bytes` written, read until mqtls closes.
async fn send_and_close(pki: &Pki, port: u16, leaf: &Leaf, bytes: &[u8]) {
    let mut tls = tls_connect(port, client_tls(pki, Some(leaf))).await.expect("tls");
    tls.write_all(bytes).await.expect("write");
    read_to_close(&mut tls).await;
}

/// Running mqtls processes driven until every metric family has a sample (prometheus-client leaves a
/// family without samples out of the exposition, `# TYPE` line included): a device's round trip to a
/// real Mosquitto, then closed by a CRL revoking it; its certificate over `max_conn_per_identity`; a
/// handshake without a certificate; a PINGREQ for a CONNECT; a fetched CRL; a TLS reload of a broken
/// key; the broker down; and, on a `websockets` listener
/// and on a PROXY-protocol listener, a refused upgrade, a text frame and a connection without a header.
/// Returns the union of their expositions.
async fn expositions_with_every_family() -> String {
    init_logs();
    let pki = Pki::new();
    let mut broker = Mosquitto::start();
    let crl = pki.path("devices.crl");
    write_file(&crl, &pki.ca.crl(&[]));
    let now = time::OffsetDateTime::now_utc();
    let fetched = CrlHttp::start(pki.ca.crl_der(2, now - time::Duration::HOUR, now + time::Duration::DAY, &[])).await;
    let (tcp, reloader) = with_admin(&pki, broker.upstream(), |c| {
        c.listeners[0].tls.crls = vec![crl.clone()];
        c.listeners[0].tls.crl_fetch.urls = vec![fetched.url.clone()];
        c.listeners[0].recheck.spread = Duration::ZERO;
        c.global.admission.per_identity = Some(1);
    })
    .await;
    let (ws, _) = with_admin(&pki, broker.upstream(), |c| {
        c.listeners[0].websocket.protocol = ListenerProtocol::Websockets;
    })
    .await;
    let trusted = mqtls::conn::proxy_protocol::parse_source_range("127.0.0.1/32").expect("range");
    let (proxied, _) =
        with_admin(&pki, broker.upstream(), |c| c.listeners[0].proxy_protocol.accept_from = vec![trusted]).await;

    let device_leaf = pki.ca.issue(true, |p| {
        p.distinguished_name.push(DnType::CommonName, "device-1");
        p.serial_number = Some(SerialNumber::from(4242u64));
    });
    let mut device = Device::connect(&pki, tcp.port(), "device-1", &device_leaf).await;
    device.round_trip(&broker, "metrics").await;
    // The same certificate again, over max_conn_per_identity.
    send_and_close(&pki, tcp.port(), &device_leaf, &packet::connect(4, "clone", None, None)).await;
    if let Ok(mut anonymous) = tls_connect(tcp.port(), client_tls(&pki, None)).await {
        read_to_close(&mut anonymous).await;
    }
    let other = pki.ca.client("device-2");
    send_and_close(&pki, tcp.port(), &other, &packet::PINGREQ).await;
    write_file(&crl, &pki.ca.crl(&[4242]));
    reloader.reload(ReloadReason::Sighup).expect("the revoking CRL loads");
    let _ = scrape_with(&tcp, "mqtls_connections_closed_total").await;
    write_file(&pki.server_key, "not a key");
    assert!(reloader.reload(ReloadReason::Sighup).is_err(), "a broken key is refused");

    send_and_close(&pki, ws.port(), &other, b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Protocol: mqtt\r\n\r\n";
    // The upgrade, then a masked text frame "hi": MQTT over WebSockets is binary frames only.
    let mut text_frame = upgrade.as_bytes().to_vec();
    text_frame.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    send_and_close(&pki, ws.port(), &other, &text_frame).await;
    let mut no_header = TcpStream::connect(proxied.addr).await.expect("connect");
    no_header.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    read_to_close(&mut no_header).await;

    broker.stop();
    send_and_close(&pki, tcp.port(), &other, &packet::connect(4, "device-2", None, None)).await;

    let mut all = String::new();
    for (proxy, name) in [
        (&tcp, "mqtls_upstream_connect_errors_total"),
        (&tcp, "mqtls_crl_fetches_total"),
        (&tcp, "mqtls_bytes_total"),
        (&tcp, "mqtls_tls_reloads_total"),
        (&tcp, "mqtls_identity_limit_refusals_total"),
        (&ws, "mqtls_websocket_refusals_total"),
        (&ws, "mqtls_websocket_violations_total"),
        (&proxied, "mqtls_proxy_protocol_errors_total"),
    ] {
        all.push_str(&scrape_with(proxy, name).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_the_alerts_name_is_one_mqtls_exports() {
    let exported = exported(&expositions_with_every_family().await);
    let mut missing = vec![];
    let mut unknown_labels = vec![];
    for file in [DASHBOARD, RULES, RULE_TESTS] {
        let text = read(file);
        for name in names_used(&text) {
            if !exported.contains_key(&name) {
                missing.push(format!("{file}: {name}"));
            }
        }
        for (name, labels) in tokens(&text) {
            let Some(have) = exported.get(&name) else { continue };
            for label in labels.iter().filter(|l| !have.contains(*l) && !TARGET_LABELS.contains(&l.as_str())) {
                unknown_labels.push(format!("{file}: {name}{{{label}}} (its samples carry {have:?})"));
            }
        }
    }
    unknown_labels.sort();
    unknown_labels.dedup();
    assert!(
        missing.is_empty() && unknown_labels.is_empty(),
        "names mqtls does not export:\n{}\nlabel filters on labels the series lack:\n{}\nexported: {:#?}",
        missing.join("\n"),
        unknown_labels.join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_is_unit_tested_and_its_runbook_url_is_a_section_of_the_operations_doc() {
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let anchors: BTreeSet<String> = read(OPERATIONS)
        .lines()
        .filter_map(|l| l.strip_prefix('#').map(|h| anchor(h.trim_start_matches('#'))))
        .collect();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 7, "alerts not found in {RULES}: {alerts:?}");
    let runbooks: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: ")).collect();
    assert_eq!(runbooks.len(), alerts.len(), "one runbook_url per alert");
    for (alert, url) in alerts.iter().zip(&runbooks) {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no case in {RULE_TESTS}: make it fire there, and stay quiet across its threshold"
        );
        let section = url.strip_prefix(&format!("{OPERATIONS}#")).unwrap_or_else(|| panic!("{alert}: {url}"));
        assert_eq!(section, alert.to_lowercase(), "{alert}'s runbook_url names its own section");
        assert!(anchors.contains(section), "{alert}: no section `{section}` in {OPERATIONS}");
    }
}
