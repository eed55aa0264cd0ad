//! Several listeners from one file, SNI-selected server certificates (and their rotation), and ALPN.
//! The listener tests run the real binary: a config file with `[[listener]]` blocks is its input.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mqtls::conn::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The issue's promise: a rotated file is in use within 2 s of the rename.
const ROTATION_BUDGET: Duration = Duration::from_secs(2);

fn upstream_addr(u: &Upstream) -> String {
    u.to_string()
}

/// Starts `mqtls --config FILE` and waits until every port in `ports` accepts.
fn start_binary(dir: &Path, config: &str, ports: &[u16]) -> Binary {
    let file = dir.join("mqtls.toml");
    write_file(&file, config);
    let args = vec!["--config".to_string(), file.display().to_string(), "--log-format".into(), "json".into()];
    let (first, rest) = ports.split_first().expect("a port");
    let mut binary = Binary::spawn(&args, dir, *first);
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in rest {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(binary.running(), "mqtls exited: {}", binary.log());
            assert!(Instant::now() < deadline, "port {port} never accepted: {}", binary.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    binary
}

/// Sends `connect` over TLS and returns what the broker behind received.
async fn forwarded(port: u16, tls: Arc<rustls::ClientConfig>, connect: &[u8], broker: CapturedBroker) -> Vec<u8> {
    let mut s = tls_connect(port, tls).await.expect("handshake");
    s.write_all(connect).await.expect("write CONNECT");
    let connack = read_exact_within(&mut s, 4).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    tokio::time::timeout(Duration::from_secs(10), broker).await.expect("broker saw it in time").expect("bytes")
}

type CapturedBroker = tokio::sync::oneshot::Receiver<Vec<u8>>;

/// True when the connection ends (error or EOF) without any byte from the server.
async fn refused(port: u16, tls: Arc<rustls::ClientConfig>, connect: &[u8]) -> bool {
    let Ok(mut s) = tls_connect(port, tls).await else { return true };
    let _ = s.write_all(connect).await;
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn two_listeners_with_different_policies_side_by_side() {
    let pki = Pki::new();
    let (devices_broker, devices_seen) = capturing_upstream().await;
    let (passwords_broker, passwords_seen) = capturing_upstream().await;
    let (p1, p2) = (free_port(), free_port());
    let config = format!(
        r#"
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
username_from = "cn"

[[listener]]
name = "devices"
listen = "127.0.0.1:{p1}"
upstream = "{}"
client_auth = "required"

[[listener]]
name = "passwords"
listen = "127.0.0.1:{p2}"
upstream = "{}"
client_auth = "optional"
"#,
        upstream_addr(&devices_broker),
        upstream_addr(&passwords_broker)
    );
    let binary = start_binary(pki.dir.path(), &config, &[p1, p2]);

    // A device with a certificate on the first listener: its CN becomes the username, the password goes.
    let device = pki.ca.client("device-1");
    let sent = packet::connect(4, "dev1", Some("whatever"), Some(b"pw"));
    let got = forwarded(p1, client_tls(&pki, Some(&device)), &sent, devices_seen).await;
    assert_eq!(got, packet::connect(4, "dev1", Some("device-1"), None), "identity mapped on the first listener");

    // A password device (no certificate) on the second listener: passed on byte for byte, to its broker.
    let pw = packet::connect(4, "legacy-7", Some("legacy-7"), Some(b"s3cret"));
    let got = forwarded(p2, client_tls(&pki, None), &pw, passwords_seen).await;
    assert_eq!(got, pw, "unmodified on the second listener");

    // The same password device on the first listener: no certificate, no connection.
    assert!(refused(p1, client_tls(&pki, None), &pw).await, "the first listener requires a certificate");

    let log = binary.log();
    assert!(log.contains("\"listener\":\"devices\"") && log.contains("\"listener\":\"passwords\""), "{log}");
}

#[tokio::test]
async fn a_global_key_inside_a_listener_block_stops_the_binary_naming_it() {
    let pki = Pki::new();
    let file = pki.path("bad.toml");
    write_file(&file, "cert = \"server.crt\"\nkey = \"server.key\"\nclient_auth = \"none\"\n\n[[listener]]\nlisten = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:9\"\n");
    let (ok, _, err) =
        run_tool(env!("CARGO_BIN_EXE_mqtls"), &["check".into(), "--config".into(), file.display().to_string()]).await;
    assert!(!ok);
    assert!(err.contains("admin") && err.contains("bad.toml"), "{err}");

    let file = pki.path("dup.toml");
    write_file(&file, "cert = \"server.crt\"\nkey = \"server.key\"\nclient_auth = \"none\"\n\n[[listener]]\nlisten = \"127.0.0.1:8883\"\n[[listener]]\nname = \"again\"\nlisten = \"127.0.0.1:8883\"\n");
    let (ok, _, err) =
        run_tool(env!("CARGO_BIN_EXE_mqtls"), &["check".into(), "--config".into(), file.display().to_string()]).await;
    assert!(!ok);
    assert!(err.contains("listen (in ") && err.contains("listener again") && err.contains("listener #1"), "{err}");
}

/// The `subject=` line `openssl s_client` prints for the certificate the server presented.
async fn presented_subject(port: u16, servername: Option<&str>) -> String {
    let mut args = vec!["s_client".to_string(), "-connect".into(), format!("127.0.0.1:{port}")];
    match servername {
        Some(name) => args.extend(["-servername".into(), name.into()]),
        None => args.push("-noservername".into()),
    }
    let (_, out, err) = run_tool("openssl", &args).await;
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject line from openssl s_client: {out}\n{err}"))
        .to_string()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_a_rotated_one_is_served_within_2s() {
    require_tool("openssl", "openssl");
    let pki = Pki::new();
    let dir = pki.dir.path();
    pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-a")).write(dir, "a");
    pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-wild")).write(dir, "w");
    let port = free_port();
    let config = format!(
        r#"
cert = "server.crt"
key = "server.key"
client_auth = "none"
reload_debounce = "100ms"

[[listener]]
listen = "127.0.0.1:{port}"

[[listener.sni]]
names = ["a.example.org"]
cert = "a.crt"
key = "a.key"

[[listener.sni]]
names = ["*.b.example.org"]
cert = "w.crt"
key = "w.key"
"#
    );
    let binary = start_binary(dir, &config, &[port]);

    assert!(presented_subject(port, Some("a.example.org")).await.contains("sni-a"));
    assert!(presented_subject(port, Some("A.Example.Org")).await.contains("sni-a"), "names are case-insensitive");
    assert!(presented_subject(port, Some("x.b.example.org")).await.contains("sni-wild"));
    assert!(presented_subject(port, Some("x.y.b.example.org")).await.contains("localhost"), "one label only");
    assert!(presented_subject(port, Some("other.example.org")).await.contains("localhost"), "unknown name: default");
    assert!(presented_subject(port, None).await.contains("localhost"), "no name: default");

    // Rotate the SNI pair the way deployments do: key then certificate, each replaced by rename.
    let next = pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-a-next"));
    replace_by_rename(&dir.join("a.key"), &next.key_pem);
    replace_by_rename(&dir.join("a.crt"), &next.cert_pem);
    within(
        ROTATION_BUDGET,
        || format!("rotated SNI certificate served: {}", binary.log()),
        || async { presented_subject(port, Some("a.example.org")).await.contains("sni-a-next") },
    )
    .await;
    assert!(presented_subject(port, Some("other.example.org")).await.contains("localhost"));
}

fn with_alpn(base: &Arc<rustls::ClientConfig>, protocols: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = (**base).clone();
    c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

#[tokio::test]
async fn alpn_negotiates_a_configured_protocol_and_refuses_others() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mut config = pki.config(broker.upstream());
    config.listeners[0].tls.alpn = vec!["mqtt".into(), "x-amzn-mqtt-ca".into()];
    let mqtls = Mqtls::start(config).await;
    let device = client_tls(&pki, Some(&pki.ca.client("device-1")));

    let s = tls_connect(mqtls.port(), with_alpn(&device, &[b"x-amzn-mqtt-ca"])).await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"x-amzn-mqtt-ca"[..]));
    let s = tls_connect(mqtls.port(), with_alpn(&device, &[b"h2", b"mqtt"])).await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
    let s = tls_connect(mqtls.port(), device.clone()).await.expect("a client offering no ALPN still connects");
    assert_eq!(s.get_ref().1.alpn_protocol(), None);

    let err = tls_connect(mqtls.port(), with_alpn(&device, &[b"h2"])).await.expect_err("h2 only is refused");
    assert!(err.to_string().contains("NoApplicationProtocol") || err.to_string().contains("protocol"), "{err}");
    eventually("the refusal is counted as a handshake failure", || async {
        mqtls.metric(r#"mqtls_tls_handshake_failures_total{reason="incompatible"}"#) == 1.0
    })
    .await;
}

/// SIGHUP re-reads each listener's allow rules from its own block.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_allow_rules_of_each_listener_from_its_block() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let (p1, p2) = (free_port(), free_port());
    let config = |second: &str| {
        format!(
            r#"
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
upstream = "127.0.0.1:{}"
reload_interval = "off"

[[listener]]
name = "open"
listen = "127.0.0.1:{p1}"

[[listener]]
name = "strict"
listen = "127.0.0.1:{p2}"
allow_cn = ["{second}"]
"#,
            broker.port
        )
    };
    let mut mqtls = start_binary(pki.dir.path(), &config("nobody"), &[p1, p2]);
    let device = client_tls(&pki, Some(&pki.ca.client("device-1")));
    assert!(mqtt_accepted(p1, device.clone()).await, "no rules on the first listener: {}", mqtls.log());
    assert!(!mqtt_accepted(p2, device.clone()).await, "the second listener's rules refuse it");

    write_file(&pki.path("mqtls.toml"), &config("device-*"));
    let ok = std::process::Command::new("kill").args(["-HUP", &mqtls.pid().to_string()]).status().expect("kill");
    assert!(ok.success());
    wait_accepted(p2, &device, true, WAIT).await;
    assert!(mqtt_accepted(p1, device).await, "the first listener is unaffected");
    assert!(mqtls.running(), "SIGHUP stopped mqtls: {}", mqtls.log());
}

#[tokio::test]
async fn admin_endpoints_cover_every_listener() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let (p1, p2, admin) = (free_port(), free_port(), free_port());
    let dir = pki.dir.path();
    pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-a")).write(dir, "a");
    let config = format!(
        r#"
admin = "127.0.0.1:{admin}"
cert = "server.crt"
key = "server.key"
client_auth = "none"
upstream = "127.0.0.1:{}"
upstream_check_interval = "100ms"

[[listener]]
name = "one"
listen = "127.0.0.1:{p1}"

[[listener]]
name = "two"
listen = "127.0.0.1:{p2}"
[[listener.sni]]
names = ["a.example.org"]
cert = "a.crt"
key = "a.key"
"#,
        broker.port
    );
    // The admin port is bound after the listeners: wait for it too.
    let _mqtls = start_binary(dir, &config, &[p1, p2, admin]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    eventually("ready once every listener is", || async { http_get(addr, "/readyz").await.0 == 200 }).await;
    let (_, body) = http_get(addr, "/certs").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["one"]["server_chain"][0]["subject"], "CN=localhost", "{body}");
    assert_eq!(v["two"]["sni"][0]["subject"], "CN=sni-a", "{body}");
    assert!(v["one"].get("sni").is_none(), "{body}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("role=\"sni\""), "{metrics}");
}

/// Connection metrics carry the listener (its name, or its address when unnamed) and its transport, so
/// a dashboard can tell listeners apart; the limit and each listener's broker readiness are exported too.
#[tokio::test]
async fn each_listeners_connections_are_counted_under_its_own_labels() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let (p1, p2, admin) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
admin = "127.0.0.1:{admin}"
cert = "server.crt"
key = "server.key"
client_auth = "none"
upstream = "127.0.0.1:{}"
upstream_check_interval = "100ms"
max_connections = 777

[[listener]]
name = "devices"
listen = "127.0.0.1:{p1}"

[[listener]]
listen = "127.0.0.1:{p2}"
"#,
        broker.port
    );
    let _mqtls = start_binary(pki.dir.path(), &config, &[p1, p2, admin]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    eventually("ready once every listener is", || async { http_get(addr, "/readyz").await.0 == 200 }).await;
    let client = client_tls(&pki, None);
    for port in [p1, p1, p2] {
        mqtt_session(port, client.clone()).await.expect("session");
    }
    let second = format!("127.0.0.1:{p2}");
    let ok =
        |listener: &str| format!(r#"mqtls_connections_total{{listener="{listener}",transport="mqtt",outcome="ok"}}"#);
    eventually("both listeners' sessions counted", || async {
        let metrics = http_get(addr, "/metrics").await.1;
        sample(&metrics, &ok("devices")) == 2.0 && sample(&metrics, &ok(&second)) == 1.0
    })
    .await;
    let metrics = http_get(addr, "/metrics").await.1;
    let handshakes =
        |listener: &str| format!(r#"mqtls_tls_handshakes_total{{listener="{listener}",transport="mqtt"}}"#);
    assert_eq!(sample(&metrics, &handshakes("devices")), 2.0, "{metrics}");
    assert_eq!(sample(&metrics, &handshakes(&second)), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"mqtls_active_connections{listener="devices"}"#), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "mqtls_max_connections"), 777.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"mqtls_upstream_ready{listener="devices"}"#), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, &format!(r#"mqtls_upstream_ready{{listener="{second}"}}"#)), 1.0, "{metrics}");
}

/// `max_connections` is the process's: a connection held on one listener fills it for the other.
#[tokio::test]
async fn the_connection_cap_is_shared_by_every_listener() {
    let pki = Pki::new();
    let (p1, p2) = (free_port(), free_port());
    let config = format!(
        r#"
cert = "server.crt"
key = "server.key"
client_auth = "none"
max_connections = 1

[[listener]]
listen = "127.0.0.1:{p1}"

[[listener]]
listen = "127.0.0.1:{p2}"
"#
    );
    let binary = start_binary(pki.dir.path(), &config, &[p1, p2]);
    let client = client_tls(&pki, None);
    // start_binary's readiness probes were plain TCP connections; wait until they are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        match tls_connect(p1, client.clone()).await {
            Ok(s) => break s,
            Err(err) => assert!(Instant::now() < deadline, "first listener never accepted: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(tls_connect(p2, client.clone()).await.is_err(), "the second listener is full too: {}", binary.log());
    drop(held);
    eventually("the second listener accepts once the first connection is gone", || async {
        tls_connect(p2, client.clone()).await.is_ok()
    })
    .await;
}

/// An SNI pair is validated like the main one: `mqtls check` names the files of a mismatched pair.
#[tokio::test]
async fn a_mismatched_sni_key_is_an_error_naming_the_files() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-a")).write(dir, "a");
    let file = pki.path("sni.toml");
    write_file(
        &file,
        "cert = \"server.crt\"\nkey = \"server.key\"\nclient_auth = \"none\"\n\n\
         [[sni]]\nnames = [\"a.example.org\"]\ncert = \"a.crt\"\nkey = \"server.key\"\n",
    );
    let args = ["check".to_string(), "--config".into(), file.display().to_string()];
    let (ok, _, err) = run_tool(env!("CARGO_BIN_EXE_mqtls"), &args).await;
    assert!(!ok);
    assert!(err.contains("server.key") && err.contains("a.crt") && err.contains("sni.toml"), "{err}");

    write_file(&file, "cert = \"server.crt\"\nkey = \"server.key\"\nclient_auth = \"none\"\nalpn = [\"mqtt\"]\n");
    let (ok, out, err) = run_tool(env!("CARGO_BIN_EXE_mqtls"), &args).await;
    assert!(ok, "{err}");
    assert!(out.contains("alpn = [\"mqtt\"]"), "{out}");
}

/// SNI entries are part of a listener's TLS configuration, built at start: a SIGHUP that finds one
/// changed or added says they need a restart (their `cert =`/`key =` lines once read as the top-level
/// keys and went unreported).
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_or_added_sni_entry_is_named_on_sighup_as_needing_a_restart() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-a")).write(dir, "a");
    pki.ca.issue(false, |p| p.distinguished_name.push(rcgen::DnType::CommonName, "sni-b")).write(dir, "b");
    let (port, upstream) = (free_port(), free_port());
    let config = |sni: &str| {
        format!(
            "cert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.crt\"\nlisten = \"127.0.0.1:{port}\"\n\
             upstream = \"127.0.0.1:{upstream}\"\nreload_interval = \"off\"\n{sni}"
        )
    };
    let a = "\n[[sni]]\nnames = [\"a.example.org\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n";
    let mut mqtls = start_binary(dir, &config(a), &[port]);
    mqtls.wait_for_log("watching TLS files");
    for (step, sni) in [
        ("changed", a.replace("a.crt", "b.crt").replace("a.key", "b.key")),
        ("added", format!("{a}\n[[sni]]\nnames = [\"b.example.org\"]\ncert = \"b.crt\"\nkey = \"b.key\"\n")),
    ] {
        write_file(&pki.path("mqtls.toml"), &config(&sni));
        let before = mqtls.log().matches("need a restart").count();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &mqtls.pid().to_string()])
            .status()
            .expect("kill")
            .success());
        let deadline = Instant::now() + WAIT;
        while mqtls.log().matches("need a restart").count() == before {
            assert!(Instant::now() < deadline, "{step}: no restart warning: {}", mqtls.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        let line = mqtls.log().lines().rfind(|l| l.contains("need a restart")).unwrap_or_default().to_string();
        assert!(line.contains(r#""settings":"sni""#), "{step}: {line}");
    }
    assert!(mqtls.running(), "SIGHUP stopped mqtls: {}", mqtls.log());
}
